"""`sweepctl pull`: copy a trial's checkpoint out of storage, verified, with a model card.

    <out>/state.pt, spec.json, checkpoint.json   the checkpoint (format: service/core/checkpoint.py)
    <out>/model_card.json                        sweep, trial, config, metrics, source URI, sha256 of every file

No torch here: verification is by sha256 against the manifest the trainer wrote when it saved.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.record import SweepIndex, SweepStore, TrialSummary

MODEL_CARD = "model_card.json"


class PullError(Exception):
    """Nothing to pull, or a copy that does not match its checksums."""


def pull_checkpoint(store: SweepStore, index: SweepIndex, trial_id: str | None,
                    out: str | Path | None) -> tuple[Path, dict]:
    """Download the checkpoint of ``trial_id`` (default: the sweep's best trial) into ``out``.
    Returns (directory, model card). The copy lands in a temporary sibling first and is renamed
    into place only once every checksum matches, so a failed pull leaves nothing half-written."""
    trial = _pick_trial(index, trial_id)
    uri = trial.checkpoint
    out = Path(out or f"{index.sweep}-{trial.trial_id}").resolve()
    if out.exists() and any(out.iterdir()):
        raise PullError(f"{out} exists and is not empty; choose another -o DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        files = storage.download_dir(uri, staging)
        if not files:
            raise PullError(f"checkpoint {uri} is empty or gone (retention may have deleted it); "
                            f"pick another trial with --trial")
        card = _model_card(index, trial, uri, staging)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, card


def _pick_trial(index: SweepIndex, trial_id: str | None) -> TrialSummary:
    if trial_id is None:
        if index.best is None:
            raise PullError(f"sweep '{index.sweep}' has no scored trial yet")
        trial_id = index.best.trial_id
    trial = index.trial(trial_id)
    if trial is None:
        known = ", ".join(sorted(t.trial_id for t in index.trials))
        raise PullError(f"no trial {trial_id!r} in sweep '{index.sweep}'; trials: {known}")
    if not trial.checkpoint:
        raise PullError(f"trial {trial_id} has no checkpoint")
    return trial


def _model_card(index: SweepIndex, trial: TrialSummary, uri: str, directory: Path) -> dict:
    try:
        manifest = checkpoint_format.verify(directory, source=uri)
    except checkpoint_format.CheckpointError as err:
        raise PullError(f"{err}; nothing was written") from None
    return {
        "sweep": index.sweep,
        "trial_id": trial.trial_id,
        "checkpoint": uri,
        "epoch": manifest["epoch"],
        "objective": index.objective.model_dump(),
        "config": trial.config,
        "metrics": manifest["metrics"],
        "spec": json.loads(checkpoint_format.read_spec_json(directory)),
        "files": {p.name: storage.sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()},
        "load": "from trainer import load_model; model, spec = load_model('<this directory>')",
    }
