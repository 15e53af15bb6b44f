"""`sweepctl pull`: copy a trial's checkpoint out of storage, verified, with a model card.

    <out>/state.pt          weights (+ optimizer state), torch.load(weights_only=True)
    <out>/spec.json         the trial's concrete spec: rebuilds the model (trainer.load_model)
    <out>/checkpoint.json   written by the trainer: epoch, metrics, sha256 of each file
    <out>/model_card.json   sweep, trial, config, metrics, source URI, sha256 of every file

No torch here: verification is by sha256 against the manifest the trainer wrote when it saved.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from service.core import storage

MANIFEST = "checkpoint.json"  # trainer.loop.CHECKPOINT_MANIFEST
MODEL_CARD = "model_card.json"


class PullError(Exception):
    """Nothing to pull, or a copy that does not match its checksums."""


def pull_checkpoint(summary: dict, trial_id: str | None, out: str | Path | None) -> tuple[Path, dict]:
    """Download the checkpoint of ``trial_id`` (default: the sweep's best trial) into ``out``.
    Returns (directory, model card). The copy lands in a temporary sibling first and is renamed
    into place only once every checksum matches, so a failed pull leaves nothing half-written."""
    trial = _pick_trial(summary, trial_id)
    uri = trial["checkpoint"]
    out = Path(out or f"{summary['sweep']}-{trial['trial_id']}").resolve()
    if out.exists() and any(out.iterdir()):
        raise PullError(f"{out} exists and is not empty; choose another -o DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        files = storage.download_dir(uri, staging)
        if not files:
            raise PullError(f"checkpoint {uri} is empty or gone (retention may have deleted it); "
                            f"pick another trial with --trial")
        card = _model_card(summary, trial, uri, staging)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, card


def _pick_trial(summary: dict, trial_id: str | None) -> dict:
    trials = {t["trial_id"]: t for t in summary["trials"]}
    if trial_id is None:
        if not summary.get("best_trial"):
            raise PullError(f"sweep '{summary['sweep']}' has no scored trial yet")
        trial_id = summary["best_trial"]
    if trial_id not in trials:
        raise PullError(f"no trial {trial_id!r} in sweep '{summary['sweep']}'; trials: {', '.join(sorted(trials))}")
    trial = trials[trial_id]
    if not trial.get("checkpoint"):
        raise PullError(f"trial {trial_id} has no checkpoint")
    return trial


def _model_card(summary: dict, trial: dict, uri: str, directory: Path) -> dict:
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise PullError(f"{uri} has no {MANIFEST}: not a checkpoint written by this trainer")
    manifest = json.loads(manifest_path.read_text())
    mismatched = [name for name, digest in manifest["sha256"].items()
                  if not (directory / name).exists() or storage.sha256_file(directory / name) != digest]
    if mismatched:
        raise PullError(f"checksum mismatch for {', '.join(mismatched)} in {uri}: the copy is corrupt "
                        f"or the checkpoint was modified; nothing was written")
    return {
        "sweep": summary["sweep"],
        "trial_id": trial["trial_id"],
        "checkpoint": uri,
        "epoch": manifest["epoch"],
        "objective": summary["objective"],
        "config": trial["config"],
        "metrics": manifest["metrics"],
        "spec": json.loads((directory / "spec.json").read_text()),
        "files": {p.name: storage.sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()},
        "load": "from trainer import load_model; model, spec = load_model('<this directory>')",
    }

