"""The fault matrix (RELIABILITY.md): the real `sweepctl` driver in its own process, real Ray, local
storage and a real S3 protocol server (moto over HTTP), and the faults a sweep meets: the driver
SIGKILLed at five points, Ctrl-C and SIGTERM, a driver fenced out by a newer attempt, a full disk.

Each test asserts what must never happen: a finished trial or epoch lost or doubled, a record that
claims what did not happen, a driver that writes after it lost the sweep."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import BASE_SPEC, deep_update, point_aws_at
from drivers import index_of, start_driver, sweepctl, wait_for
from service.core import storage
from service.core.record import SweepStore
from trainer.driver.lock import DriverLock

pytestmark = pytest.mark.slow

# A few seconds per epoch, so that the driver can be caught between events.
SLOW_TRIALS = {
    "data": {"name": "synthetic", "num_samples": 4096, "image_size": 32},
    "model": {"num_conv_layers": 2, "filters": 32, "num_fc_layers": 1},
    "train": {"epochs": 4, "batch_size": 16},
    "checkpoint": {"every": 1, "keep": 2},
}


def write_spec(tmp_path: Path, uri: str, name: str, **changes) -> Path:
    spec = deep_update(BASE_SPEC, deep_update(SLOW_TRIALS, {"name": name, "storage": {"uri": uri}, **changes}))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lr_grid(n: int) -> dict:
    return {"optimizer": {"lr": {"grid": [round(1e-3 * (k + 1), 4) for k in range(n)]}}}


def assert_every_epoch_exactly_once(store: SweepStore, epochs: int) -> list:
    index = store.read_index()
    trials = store.read_trials(index)
    for trial in trials:
        seen = [h.epoch for h in trial.history]
        assert seen == list(range(1, epochs + 1)), f"{trial.trial_id} has epochs {seen}"
    return trials


def files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ============================================================================ SIGKILL × 5, resume
@pytest.fixture(params=["local", "s3"])
def sweep_storage(request, tmp_path, monkeypatch):
    if request.param == "local":
        return str(tmp_path / "runs")
    point_aws_at(request.getfixturevalue("s3_server"), monkeypatch, tmp_path)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team"


MID_SWEEP = 4  # the attempt killed mid-sweep, trials running with checkpoints


def test_a_driver_killed_at_five_points_resumes_every_trial_with_every_epoch_once(sweep_storage, tmp_path):
    """keep: 2 retention on, 6 trials × 4 epochs, 2 at a time, on local storage and on S3. Each kill
    is a SIGKILL (no clean-up: Ray's reaper takes the embedded cluster down with the driver, like a
    lost RayJob head), each resume the next attempt. Also: while the first driver runs, a second one
    refuses and writes nothing; a trial that had ended before a kill keeps its results; a trial
    checkpointed at a kill continues from a checkpoint."""
    name, epochs, n_trials = "killed", 4, 6
    spec = write_spec(tmp_path, sweep_storage, name, train={"epochs": epochs, **lr_grid(n_trials)},
                      resources={"max_concurrent_trials": 2})
    store = SweepStore(sweep_storage, name)

    def ended(index) -> int:
        return sum(index.trial_states.get(s, 0) for s in ("terminated", "stopped_early", "error"))

    def checkpointed_and_running(index) -> bool:
        return any(t.status == "running" and t.checkpoint for t in index.trials)

    # (what the kill interrupts, when it comes): each is met during the run or its resume.
    points = [
        ("start-up: the lock taken, no trial reported yet", lambda i: storage.exists(store.spec_uri)),
        ("a running trial's first checkpoint", lambda i: i is not None and checkpointed_and_running(i)),
        ("right after the first trial ended (retention's moment)", lambda i: i is not None and ended(i) >= 1),
        ("mid-sweep, trials running with checkpoints", lambda i: i is not None and ended(i) >= 3 and checkpointed_and_running(i)),
        # Not "n - 1 ended": the last two trials start close together and may end in one snapshot,
        # and a kill that comes after the end has no sweep left to interrupt (a CI failure).
        ("the last trials running, none left to start", lambda i: i is not None and n_trials - 2 <= ended(i) < n_trials
         and i.trial_states.get("running", 0) >= 1),
    ]
    # At the mid-sweep kill: the trials that had ended (their records as they were) and the running
    # ones with a checkpoint (the epochs they had checkpointed).
    finished_before: dict = {}
    checkpointed: dict[str, int] = {}
    for attempt, (what, reached) in enumerate(points, start=1):
        log = tmp_path / f"driver-{attempt}.log"
        args = ("run", str(spec)) if attempt == 1 else ("resume", name, "--storage", sweep_storage)
        driver = start_driver(*args, log=log)
        try:
            # This attempt's index only: the one a killed attempt left may already show the next point
            # (4 ended, 2 running after the mid-sweep kill), which would kill this one before it took the lock.
            wait_for(lambda: reached(index_of_attempt(sweep_storage, name, attempt)), what, proc=driver, log=log)
            if attempt == 1:
                assert_a_second_driver_refuses_and_writes_nothing(store, spec, name, sweep_storage)
            if attempt == MID_SWEEP:
                at_kill = store.read_index()
                finished_before = {t.trial_id: store.read_trial(t.trial_id) for t in at_kill.trials if t.status == "terminated"}
                checkpointed = {t.trial_id: t.epochs for t in at_kill.trials if t.status == "running" and t.checkpoint}
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            assert store.read_index().status != "finished", f"the sweep finished before the kill at {what!r}"
        finally:
            if driver.poll() is None:
                driver.kill()

    final = sweepctl("resume", name, "--storage", sweep_storage)
    assert final.returncode == 0, final.stdout + final.stderr
    index = store.read_index()
    assert index.status == "finished" and index.driver_attempt == len(points) + 1
    assert index.trial_states == {"terminated": n_trials}, index.trial_states  # no trial failed
    trials = {t.trial_id: t for t in assert_every_epoch_exactly_once(store, epochs)}
    for trial in trials.values():
        assert trial.error is None
        # Retention kept at most the best 2 + the latest, and each one it names is really there.
        assert 1 <= len(trial.checkpoints) <= 3
        for ref in trial.checkpoints:
            assert storage.exists(storage.join(ref.uri, "checkpoint.json")), ref.uri
    assert finished_before and checkpointed, "the mid-sweep point was not met"
    # A trial that had ended keeps its results. Tune's experiment snapshot (every 2 s,
    # TUNE_GLOBAL_CHECKPOINT_S) may not yet have recorded an end that came just before the kill:
    # the resume then redoes that trial's last epochs from its last checkpoint, with identical results.
    for trial_id, before in finished_before.items():
        assert results(trials[trial_id]) == results(before), trial_id
    # A trial interrupted with checkpoints continues from one (the snapshot's), not from scratch,
    # once it had checkpointed more than a snapshot interval before the kill (3 epochs of ~1.5 s).
    for trial_id, epochs_checkpointed in checkpointed.items():
        later = [h for h in trials[trial_id].history if h.attempt > MID_SWEEP]
        if later and epochs_checkpointed >= 3:
            first = later[0]
            assert first.resumed_from_epoch == first.epoch - 1 >= 1, (trial_id, first)


def index_of_attempt(uri: str, name: str, attempt: int):
    """The sweep's index once driver attempt ``attempt`` has written it, else None."""
    index = index_of(uri, name)
    return index if index is not None and index.driver_attempt == attempt else None


def results(trial) -> list[tuple]:
    """What a trial's epochs computed (the same on a redo: CPU training is deterministic)."""
    return [(h.epoch, h.val_acc, h.val_loss, h.train_acc, h.train_loss) for h in trial.history]


def assert_a_second_driver_refuses_and_writes_nothing(store: SweepStore, spec: Path, name: str, uri: str) -> None:
    owner, spec_before = storage.read_json(store.lock_uri), storage.read_text(store.spec_uri)
    second = sweepctl("resume", name, "--storage", uri)
    assert second.returncode == 2, second.stdout + second.stderr
    assert "being run by driver attempt 1" in second.stderr and "Traceback" not in second.stderr
    again = sweepctl("run", str(spec))
    assert again.returncode == 2 and f"sweepctl resume {name}" in again.stderr, again.stderr
    assert storage.read_json(store.lock_uri)["token"] == owner["token"]
    assert storage.read_text(store.spec_uri) == spec_before


# ============================================================================ Ctrl-C, SIGTERM
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_records_interrupted_prints_the_resume_command_and_resume_loses_nothing(sig, tmp_path):
    uri, name, epochs = str(tmp_path / "runs"), f"interrupted-{sig.name.lower()}", 8  # still running after the waits
    spec = write_spec(tmp_path, uri, name, train={"epochs": epochs, **lr_grid(2)}, resources={"max_concurrent_trials": 1})
    store = SweepStore(uri, name)
    log = tmp_path / "driver.log"
    # SIGINT as a terminal's Ctrl-C sends it: to the whole process group (Ray's processes too);
    # SIGTERM as Kubernetes sends it: to the driver process.
    driver = start_driver("run", str(spec), log=log, new_session=True)
    try:
        wait_for(lambda: (i := index_of(uri, name)) and any(t.status == "running" and t.checkpoint for t in i.trials),
                 "a running trial with a checkpoint", proc=driver, log=log)
        time.sleep(2.5)  # Tune's 2 s snapshot records that checkpoint
        if sig == signal.SIGINT:
            os.killpg(driver.pid, signal.SIGINT)
        else:
            driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=90)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    out = log.read_text()
    assert driver.returncode == 128 + sig, out
    assert f"sweepctl resume {name} --storage {uri}" in out
    for noise in ("Tuner.restore", "Failed to fetch metrics", "Traceback"):
        assert noise not in out, out
    index = store.read_index()
    assert index.status == "interrupted" and index.stopped_at and sig.name in index.stop_reason
    assert "running" not in index.trial_states  # no trial claims to run after the driver stopped
    assert storage.read_json(store.lock_uri)["state"] == "interrupted"
    # The trials the signal stopped are paused, each with the checkpoint a resume continues from.
    stopped = [t for t in index.trials if t.status == "paused" and t.checkpoint]
    assert stopped, index.trials

    # While the resume runs, every read of the index and of driver.json is whole and this attempt's:
    # Tune's restore copies the sweep's top-level *.json and would upload stale copies at each snapshot.
    resume_log = tmp_path / "resume.log"
    resumed = start_driver("resume", name, "--storage", uri, log=resume_log)
    attempts_seen = {store.index_uri: [], store.lock_uri: []}
    while resumed.poll() is None:
        for uri_, seen in attempts_seen.items():
            record = json.loads(storage.read_bytes(uri_))  # raises on a half-written object
            seen.append(record["driver_attempt" if uri_ == store.index_uri else "attempt"])
            assert seen[-1] == max(seen), f"{uri_} went back to an earlier attempt: {seen}"
        time.sleep(0.05)
    assert resumed.returncode == 0, resume_log.read_text()
    assert all(seen[-1] == 2 for seen in attempts_seen.values()), attempts_seen
    assert store.read_index().status == "finished"
    trials = assert_every_epoch_exactly_once(store, epochs)
    for trial in (t for t in trials if t.trial_id in {s.trial_id for s in stopped}):
        first_resumed = next(h for h in trial.history if h.attempt == 2)
        assert first_resumed.resumed_from_epoch >= 1  # continued from its checkpoint, not from scratch


# ============================================================================ fencing
def test_a_fenced_out_driver_stops_its_trials_within_one_heartbeat_and_never_writes_again(tmp_path):
    uri, name = str(tmp_path / "runs"), "fenced"
    spec = write_spec(tmp_path, uri, name, train={"epochs": 6, **lr_grid(2)}, resources={"max_concurrent_trials": 2})
    store = SweepStore(uri, name)
    sweep_dir = Path(uri) / name
    log = tmp_path / "driver.log"
    driver = start_driver("run", str(spec), log=log)
    try:
        wait_for(lambda: (i := index_of(uri, name)) and any(t.status == "running" and t.epochs >= 1 for t in i.trials),
                 "a running trial", proc=driver, log=log)
        # What a newer driver does once it presumes this one dead (e.g. cut off from storage for
        # minutes): claim the next attempt, then write driver.json as the owner.
        taken = time.monotonic()
        storage.create_exclusive(store.attempt_claim_uri(2), json.dumps({"attempt": 2, "host": "elsewhere"}).encode())
        storage.write_json_atomic(store.lock_uri, {"attempt": 2, "state": "running", "host": "elsewhere", "token": "newer"})
        time.sleep(DriverLock.FENCE_SECONDS + 0.5)
        record_then = {k: v for k, v in files_under(sweep_dir).items() if _is_record(k)}
        driver.wait(timeout=60)
        stopped_after = time.monotonic() - taken
    finally:
        if driver.poll() is None:
            driver.kill()
    out = log.read_text()
    assert driver.returncode == 1, out
    assert "lost sweep fenced to attempt 2" in out and "wrote nothing more" in out
    assert stopped_after <= DriverLock.HEARTBEAT_SECONDS, f"stopped {stopped_after:.1f} s after the takeover"
    at_exit = files_under(sweep_dir)
    assert {k: v for k, v in at_exit.items() if _is_record(k)} == record_then  # the record is the new owner's
    assert storage.read_json(store.lock_uri)["token"] == "newer"
    time.sleep(3)
    assert files_under(sweep_dir) == at_exit  # its trials stopped: nothing writes anything any more


def _is_record(relative: str) -> bool:
    """The driver's writes: the index, trial records, driver.json, the driver log."""
    parts = Path(relative).parts
    return relative in ("sweep.json", "driver.json") or parts[-1] == "trial.json" or parts[:2] == ("logs", "driver")


# ============================================================================ a full disk
@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs (needs root, as in CI): what a full disk or an exceeded quota looks like."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a tmpfs for the full-disk test: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_sweep_with_one_clear_error_and_a_valid_record(tiny_disk, tmp_path):
    uri, name = str(tiny_disk), "full"
    # ~0.8 MB checkpoints (2048 × 32 head weights and their Adam moments), every epoch, all kept:
    # the disk fills up at the fourth.
    spec = write_spec(tmp_path, uri, name, model={"num_conv_layers": 2, "filters": 32, "num_fc_layers": 2, "hidden_size": 32},
                      train={"epochs": 6, **lr_grid(2)}, checkpoint={"every": 1, "keep": None},
                      resources={"max_concurrent_trials": 1, "max_failures": 3})
    started = time.monotonic()
    done = sweepctl("run", str(spec), timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "storage full" in out and "Traceback" not in out, out
    assert out.count("No space left on device") <= 3, out  # one error, not one per retry
    index = json.loads((tiny_disk / name / "sweep.json").read_text())  # still valid JSON
    assert index["status"] == "failed" and "storage full" in index["stop_reason"], index
    assert json.loads((tiny_disk / name / "driver.json").read_text())["state"] == "failed"
    assert time.monotonic() - started < 200
