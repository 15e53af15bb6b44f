"""The checkpoint format: what a trial checkpoint directory holds, and how it is verified.

    <checkpoint>/state.pt          torch.save of model/optimizer/scaler state, input shape, class names, epoch
    <checkpoint>/spec.json         the trial's concrete spec: enough to rebuild the model
    <checkpoint>/checkpoint.json   the manifest: epoch, that epoch's metrics, sha256 of the two files above

The trainer writes it (trainer/loop.py), ``trainer.load_model`` reads it (weights_only), and
``sweepctl pull`` / evaluation verify it against the manifest before anything uses it. No torch
here: the state file is opaque bytes to this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.core import storage

STATE = "state.pt"
SPEC = "spec.json"
MANIFEST = "checkpoint.json"
PAYLOAD = (STATE, SPEC)


class CheckpointError(Exception):
    """A checkpoint directory that is not one of ours, or does not match its manifest."""


def write_manifest(directory: str | Path, epoch: int, metrics: dict) -> dict:
    """Write the manifest of the payload files already in ``directory``; returns it."""
    directory = Path(directory)
    manifest = {
        "epoch": epoch,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "sha256": {name: storage.sha256_file(directory / name) for name in PAYLOAD},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify(directory: str | Path, source: str | None = None) -> dict:
    """The manifest of a local checkpoint directory, once every file matches its sha256;
    CheckpointError naming what is wrong otherwise (``source``: the URI it came from, for messages)."""
    directory = Path(directory)
    where = source or str(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{where} has no {MANIFEST}: not a checkpoint written by this trainer")
    try:
        manifest = json.loads(manifest_path.read_text())
        digests = dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: unreadable {MANIFEST} ({err})") from None
    mismatched = [name for name, digest in digests.items()
                  if not (directory / name).exists() or storage.sha256_file(directory / name) != digest]
    if mismatched:
        raise CheckpointError(f"checksum mismatch for {', '.join(mismatched)} in {where}: the copy is corrupt "
                              f"or the checkpoint was modified")
    return manifest


def read_spec_json(directory: str | Path) -> str:
    return (Path(directory) / SPEC).read_text()
