"""A corrupt checkpoint is not fatal, end to end: real Ray, local storage, the real `sweepctl`
driver in its own process. The driver is SIGKILLed mid-sweep, the checkpoint Tune will restore the
trial from is truncated, and `sweepctl resume` must pass over it (its sha256 manifest no longer
matches) and continue from the trial's previous checkpoint instead of failing the trial.
(The fallback's rules, without Ray: tests/trainer/test_restore_checkpoint.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BASE_SPEC, deep_update
from service.core.record import SweepStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8
# ~1 s epochs on 2 busy cores: slow enough to kill mid-run, fast enough for a ~1-minute test.
SPEC = {
    "name": "corrupt-ckpt",
    "data": {"name": "synthetic", "num_samples": 2048, "image_size": 32},
    "model": {"num_conv_layers": 2, "filters": 32, "num_fc_layers": 1},
    "train": {"epochs": EPOCHS, "batch_size": 16},
    "checkpoint": {"every": 1, "keep": None},
}


def sweepctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _wait_for(condition, what: str, driver: subprocess.Popen, log: Path, timeout_s: float = 120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if driver.poll() is not None:
            pytest.fail(f"driver exited ({driver.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


def _checkpoints(sweep_dir: Path) -> list[Path]:
    return sorted(sweep_dir.glob("*/checkpoint_*"))


def _tunes_checkpoint(sweep_dir: Path) -> Path | None:
    """The checkpoint Tune's latest experiment snapshot names for the sweep's one trial: what a
    resume restores it from (Tune snapshots every 2 s, TUNE_GLOBAL_CHECKPOINT_S, so it may lag
    behind the newest checkpoint in storage)."""
    from ray.tune import ExperimentAnalysis

    try:
        (trial,) = ExperimentAnalysis(str(sweep_dir)).trials
    except Exception:  # no snapshot yet
        return None
    return Path(trial.checkpoint.path) if trial.checkpoint else None


def _epoch(checkpoint: Path) -> int:
    return json.loads((checkpoint / "checkpoint.json").read_text())["epoch"]


def test_a_truncated_checkpoint_is_skipped_and_the_trial_resumes_from_the_previous_one(tmp_path):
    runs = tmp_path / "runs"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(deep_update(BASE_SPEC, {**SPEC, "storage": {"uri": str(runs)}})))
    sweep_dir = runs / SPEC["name"]
    log = tmp_path / "driver-1.log"
    driver = subprocess.Popen([sys.executable, "-m", "service.cli", "run", str(spec_path)], cwd=REPO,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        # Kill once Tune's snapshot names a checkpoint with two before it (the fallback must pick the newer).
        _wait_for(lambda: (c := _tunes_checkpoint(sweep_dir)) and _epoch(c) >= 3, "Tune to record a 3rd checkpoint",
                  driver, log)
        assert driver.poll() is None, log.read_text()
        driver.send_signal(signal.SIGKILL)  # no clean-up at all
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    # The killed driver's Ray stops its trial: wait until no checkpoint lands any more.
    stable, seen = time.time(), _checkpoints(sweep_dir)
    while time.time() - stable < 2:
        time.sleep(0.2)
        if (now := _checkpoints(sweep_dir)) != seen:
            stable, seen = time.time(), now
    target = _tunes_checkpoint(sweep_dir)  # what the resume restores the trial from
    trial_id, epoch = target.parent.name, _epoch(target)
    assert 3 <= epoch < EPOCHS, f"killed too late (Tune's checkpoint is epoch {epoch})"
    state = target / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    resumed = sweepctl("resume", SPEC["name"], "--storage", str(runs))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    store = SweepStore(str(runs), SPEC["name"])
    record = store.read_trial(trial_id)
    assert record.status == "terminated", record.error
    assert [h.epoch for h in record.history] == list(range(1, EPOCHS + 1))  # every epoch exactly once
    first = next(h for h in record.history if h.attempt == 2)
    assert (first.epoch, first.resumed_from_epoch) == (epoch, epoch - 1)  # from the previous checkpoint
    (skipped,) = record.skipped_checkpoints
    assert (skipped.uri, skipped.attempt, skipped.resumed_from_epoch) == (str(target), 2, epoch - 1)
    assert skipped.reason.startswith(f"checksum mismatch for state.pt in {target.name}")
    assert str(target) not in [c.uri for c in record.checkpoints] and record.checkpoint != str(target)
    assert store.read_index().trials[0].checkpoint == record.checkpoint
    # said once on the driver, and in the trial's own log
    assert (resumed.stdout + resumed.stderr).count(f"skipped corrupt checkpoint {target}") == 1
    trial_log = sweepctl("logs", SPEC["name"], "--trial", trial_id, "--storage", str(runs))
    assert trial_log.returncode == 0, trial_log.stderr
    assert f"skipping checkpoint {target}: checksum mismatch for state.pt" in trial_log.stdout
    assert f"restored from {target.parent / f'checkpoint_{int(target.name[-6:]) - 1:06d}'} (epoch {epoch - 1})" \
        in trial_log.stdout
