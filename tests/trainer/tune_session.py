"""A stand-in for ``ray.tune``'s session in the trainer's own tests of ``fit`` without a Ray
cluster: checkpoints laid out as Tune lays them out."""

from __future__ import annotations

import shutil
from pathlib import Path

import ray.train


class Session:
    """What ``fit`` needs of ``ray.tune``: starts from ``start_from``, and stores each reported
    checkpoint as Tune does, as <trial_dir>/checkpoint_<k> (k counts from ``first_index``)."""

    Checkpoint = ray.train.Checkpoint

    def __init__(self, trial_dir: Path, start_from: Path | None = None, first_index: int = 0):
        self.trial_dir, self.start_from, self.next_index = trial_dir, start_from, first_index
        self.trial_id = trial_dir.name
        self.reports: list[dict] = []

    def get_checkpoint(self):
        return ray.train.Checkpoint(str(self.start_from)) if self.start_from else None

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, self.trial_dir / f"checkpoint_{self.next_index:06d}")
            self.next_index += 1
