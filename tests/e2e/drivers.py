"""Running the real `sweepctl` driver in its own process, and watching its sweep's record.

Shared by the end-to-end tests that kill, interrupt or fence a driver (a process of its own, so it
can be SIGKILLed like a lost RayJob head, and gets the AWS_* environment at start like a pod)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.core import storage
from service.core.record import SweepIndex, SweepStore

REPO = Path(__file__).resolve().parents[2]


def sweepctl(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def start_driver(*args: str, log: Path, new_session: bool = False) -> subprocess.Popen:
    """``new_session``: its own process group, so a test can Ctrl-C it as a terminal does (killpg)."""
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=new_session)


def wait_for(condition, what: str, timeout_s: float = 300, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text() if log else ''}")


def index_of(uri: str, name: str) -> SweepIndex | None:
    try:
        return SweepStore(uri, name).read_index()
    except storage.StorageError:
        return None
