"""The one place that knows storage URIs.

Layout under the storage root, per sweep:  <root>/<sweep-name>/
    spec.yaml       the resolved spec (after --set), the source of truth for resume/report
    summary.json    per-trial config, metric history, status; best trial and checkpoint
    <trial dirs>    Ray Tune's experiment: trial results and checkpoints
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def local_path(uri: str) -> Path:
    """file://PATH or a plain path → absolute local path (relative paths from the working dir)."""
    path = uri.removeprefix("file://") if uri.startswith("file://") else uri
    return Path(path).expanduser().resolve()


def sweep_root(storage_uri: str) -> Path:
    return local_path(storage_uri)


def sweep_dir(storage_uri: str, sweep_name: str) -> Path:
    return sweep_root(storage_uri) / sweep_name


def write_text_atomic(path: Path, text: str) -> None:
    """Write-then-rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
