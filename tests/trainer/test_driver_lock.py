"""One driver per sweep: driver.json's attempt numbers, liveness and fencing (local storage)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from service.core.errors import SweepBusy
from service.core.record import SweepStore
from trainer.driver.sweep import DriverLock


def lock(sweep_dir) -> DriverLock:
    """A driver lock for the sweep stored in ``sweep_dir`` (its driver.json)."""
    return DriverLock(SweepStore(str(sweep_dir.parent), sweep_dir.name))


def record(path):
    return json.loads((path / "driver.json").read_text())


def test_a_live_driver_keeps_the_sweep_and_the_next_one_gets_the_next_attempt(tmp_path):
    first = lock(tmp_path)
    first.acquire()
    assert first.attempt == 1 and record(tmp_path)["state"] == "running"
    before = (tmp_path / "driver.json").read_text()
    with pytest.raises(SweepBusy, match="being run by driver attempt 1"):
        lock(tmp_path).acquire()
    assert (tmp_path / "driver.json").read_text() == before  # the refused one wrote nothing

    first.release("finished")
    second = lock(tmp_path)
    second.acquire()
    assert second.attempt == 2 and [p["attempt"] for p in record(tmp_path)["previous"]] == [1]
    second.release("finished")
    assert record(tmp_path)["state"] == "finished"


def test_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    crashed = lock(tmp_path)
    crashed.acquire()
    crashed._stop.set()  # as if SIGKILLed: no release, the record still says running
    (tmp_path / "driver.json").write_text(json.dumps({**record(tmp_path), "pid": int(dead.stdout)}))
    successor = lock(tmp_path)
    successor.acquire()
    assert successor.attempt == 2
    successor.release("finished")


def test_a_driver_on_another_host_counts_as_gone_only_after_its_heartbeat_is_stale(tmp_path):
    elsewhere = {"attempt": 3, "state": "running", "host": "head-pod-of-a-lost-rayjob", "pid": 1, "token": "x"}
    (tmp_path / "driver.json").write_text(json.dumps({**elsewhere, "heartbeat_at": time.time() - 5}))
    with pytest.raises(SweepBusy, match="host head-pod-of-a-lost-rayjob"):
        lock(tmp_path).acquire()
    (tmp_path / "driver.json").write_text(json.dumps({**elsewhere, "heartbeat_at": time.time() - DriverLock.STALE_SECONDS - 1}))
    successor = lock(tmp_path)
    successor.acquire()
    assert successor.attempt == 4
    successor.release("finished")


def test_a_driver_that_lost_the_sweep_to_another_attempt_stops_writing(tmp_path):
    old = lock(tmp_path)
    old.acquire()
    (tmp_path / "driver.json").write_text(json.dumps({**record(tmp_path), "token": "a newer attempt"}))
    old._beat()
    assert old.lost
    old.release("finished")
    assert record(tmp_path)["token"] == "a newer attempt"  # the newer attempt's record stays
