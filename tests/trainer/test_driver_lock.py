"""One driver per sweep: attempt claims (conditional creates), liveness and fencing, on local
storage and on a real S3 protocol server (moto over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from service.core import storage

from service.core.errors import SweepBusy
from service.core.record import SweepStore
from trainer.driver.lock import DriverLock


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


def test_a_driver_that_lost_driver_json_to_another_attempt_stops_writing(tmp_path):
    old = lock(tmp_path)
    old.acquire()
    (tmp_path / "driver.json").write_text(json.dumps({**record(tmp_path), "token": "a newer attempt"}))
    old._beat()
    assert old.lost
    old.release("finished")
    assert record(tmp_path)["token"] == "a newer attempt"  # the newer attempt's record stays


def test_a_newer_attempt_claim_fences_the_owner_out_within_one_fence_interval(tmp_path):
    told = []
    owner = DriverLock(SweepStore(str(tmp_path), "fenced"), on_lost=lambda: told.append(time.monotonic()))
    owner.acquire()
    before = record(tmp_path / "fenced")
    # What a driver elsewhere writes when it presumes this one dead: the next attempt's claim.
    taken = time.monotonic()
    (tmp_path / "fenced" / "driver" / "attempt-000002.json").write_text(json.dumps({"attempt": 2}))
    deadline = time.monotonic() + 5
    while not owner.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner.lost and len(told) == 1
    assert told[0] - taken <= DriverLock.FENCE_SECONDS + 0.5
    owner.release("finished")
    assert record(tmp_path / "fenced") == before  # a fenced driver wrote nothing more


def test_attempt_claims_are_created_only_if_absent_locally_and_on_s3(tmp_path, s3_server, monkeypatch):
    from conftest import point_aws_at

    point_aws_at(s3_server, monkeypatch, tmp_path)
    storage.s3_client().create_bucket(Bucket="claims")
    for root in (str(tmp_path / "local"), "s3://claims/team"):
        uri = storage.join(root, "sweep", "driver", "attempt-000001.json")
        assert storage.create_exclusive(uri, b'{"attempt": 1, "who": "first"}')
        assert not storage.create_exclusive(uri, b'{"attempt": 1, "who": "second"}')
        assert storage.read_json(uri)["who"] == "first"


# A driver process that takes the lock with 0.3 s added to every storage call (read, list,
# create, write), holds it for 2 s, and prints what happened.
_RACER = """
import sys, time
from service.core import storage
from service.core.errors import SweepBusy
from service.core.record import SweepStore
from trainer.driver.lock import DriverLock

def slow(f):
    def call(*a, **k):
        time.sleep(0.3)
        return f(*a, **k)
    return call

for name in ("read_bytes", "list_files", "exists", "create_exclusive", "write_bytes_atomic"):
    setattr(storage, name, slow(getattr(storage, name)))
start_at = float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))  # both racers start at the same moment
lock = DriverLock(SweepStore(sys.argv[1], sys.argv[2]))
try:
    lock.acquire()
except SweepBusy as err:
    print("refused", str(err).splitlines()[0], flush=True)
    sys.exit(0)
print("owner", lock.attempt, flush=True)
time.sleep(2)
print("lost" if lock.lost else "kept", flush=True)
lock.release("finished")
"""


def test_two_drivers_racing_with_slow_storage_give_exactly_one_owner_20_times_out_of_20(tmp_path, s3_server, monkeypatch):
    from conftest import point_aws_at

    point_aws_at(s3_server, monkeypatch, tmp_path)
    storage.s3_client().create_bucket(Bucket="race")
    rounds, outcomes = 20, []
    for batch in range(0, rounds, 10):  # 10 races at a time, each on its own sweep
        procs = []
        start_at = time.time() + 5  # after every interpreter has imported everything
        for n in range(batch, batch + 10):
            procs += [subprocess.Popen([sys.executable, "-c", _RACER, "s3://race/team", f"sweep-{n}", str(start_at)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for a, b in zip(procs[::2], procs[1::2]):
            out = [p.communicate(timeout=60) for p in (a, b)]
            assert all(p.returncode == 0 for p in (a, b)), out
            outcomes.append([o.split()[0] for o, _ in out] + [line for o, _ in out for line in o.splitlines()[1:]])
    owners = [sum(1 for word in o[:2] if word == "owner") for o in outcomes]
    assert owners == [1] * rounds, outcomes
    assert all("lost" not in o for o in outcomes)  # the owner kept it: nobody took it over
