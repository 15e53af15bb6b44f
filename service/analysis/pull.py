"""`sweepctl pull`: copy a trial's checkpoint out of storage, verified, with a model card.

    <out>/state.pt, spec.json, checkpoint.json   the checkpoint (format: service/core/checkpoint.py)
    <out>/model_card.json                        sweep, trial, config, metrics, source URI, sha256 of every file

No torch here: verification is by sha256 against the manifest the trainer wrote when it saved.
From storage (``pull_checkpoint``) or from the sweep service's tar of it (``pull_from_tar``,
`sweepctl pull --server`): the same checks, the same card, the same bytes.
"""

from __future__ import annotations

import http.client
import json
import tarfile
from pathlib import Path

from service.core import checkpoint as checkpoint_format
from service.core import storage
from service.core.record import Objective, SweepIndex, SweepStore, TrialSummary

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

    def download(staging: Path) -> None:
        if not storage.download_dir(uri, staging):
            raise PullError(f"checkpoint {uri} is empty or gone (retention may have deleted it); "
                            f"pick another trial with --trial")

    return _into_place(out, index.sweep, index.objective, trial, uri, download)


def pull_from_tar(stream, sweep: str, objective: Objective, trial: TrialSummary, uri: str,
                  out: str | Path | None) -> tuple[Path, dict]:
    """``pull_checkpoint`` for a checkpoint that arrives as a tar (service/core/checkpoint.py's,
    from GET /sweeps/{name}/trials/{id}/checkpoint): ``stream`` is read once, front to back, into
    the staging directory, then verified against the manifest like any pull. A transfer cut short
    (the service stops sending when a file fails its sha256 as it streams) fails with the checksum
    message when a file that arrived does not match, and leaves nothing behind either way."""

    def unpack(staging: Path) -> None:
        try:
            checkpoint_format.extract_tar(stream, staging)
        except checkpoint_format.CheckpointError as err:
            raise PullError(f"{err}; nothing was written") from None
        except (tarfile.TarError, EOFError, OSError, http.client.HTTPException) as err:
            cut = f"the checkpoint's download was cut short ({type(err).__name__}: {err}); nothing was written"
            if (staging / checkpoint_format.MANIFEST).exists():
                try:
                    checkpoint_format.verify(staging, source=uri)
                except checkpoint_format.CheckpointError as mismatch:
                    # what did arrive does not match: that is the news (the service found it too)
                    if "checksum mismatch" in str(mismatch):
                        raise PullError(f"{mismatch}; nothing was written") from None
            raise PullError(cut) from None

    return _into_place(out, sweep, objective, trial, uri, unpack)


def _into_place(out: str | Path | None, sweep: str, objective: Objective, trial: TrialSummary, uri: str,
                fill) -> tuple[Path, dict]:
    """``fill(staging)`` puts the checkpoint's files into a temporary sibling of ``out``, which is
    renamed into place only once every checksum matches: a failed pull leaves nothing half-written."""
    out = Path(out or f"{sweep}-{trial.trial_id}").resolve()
    if out.exists() and any(out.iterdir()):
        raise PullError(f"{out} exists and is not empty; choose another -o DIR")
    with storage.staged_directory(out) as staging:
        fill(staging)
        card = _model_card(sweep, objective, trial, uri, staging)
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
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


def _model_card(sweep: str, objective: Objective, trial: TrialSummary, uri: str, directory: Path) -> dict:
    try:
        manifest = checkpoint_format.verify(directory, source=uri)
    except checkpoint_format.CheckpointError as err:
        raise PullError(f"{err}; nothing was written") from None
    return {
        "sweep": sweep,
        "trial_id": trial.trial_id,
        "checkpoint": uri,
        "epoch": manifest["epoch"],
        "objective": objective.model_dump(),
        "config": trial.config,
        "metrics": manifest["metrics"],
        "spec": json.loads(checkpoint_format.read_spec_json(directory)),
        "files": {p.name: storage.sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()},
        "load": "from trainer import load_model; model, spec = load_model('<this directory>')",
    }


def evaluated_metrics(store: SweepStore, trial_id: str, checkpoint: str) -> dict | None:
    """The test-split numbers `sweepctl evaluate` recorded for exactly this checkpoint (its
    evaluation.json next to the sweep's report), or None when it has not evaluated this one."""
    from service.analysis.report import EVALUATION_JSON

    try:
        evaluation = storage.read_json_if_exists(storage.join(store.report_uri, EVALUATION_JSON))
    except (ValueError, OSError, storage.StorageError):
        return None
    if not isinstance(evaluation, dict) or (evaluation.get("trial_id"), evaluation.get("checkpoint")) != (trial_id, checkpoint):
        return None
    return {"accuracy": evaluation.get("test_accuracy"), "loss": evaluation.get("test_loss"),
            "images": evaluation.get("test_size")}
