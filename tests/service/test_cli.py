"""sweepctl validate as a user sees it: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BASE_SPEC, deep_update
from service.core.record import Objective, SweepStore, new_index

REPO = Path(__file__).resolve().parents[2]

THREE_MISTAKES = """\
name: three-mistakes
data: {name: digits}
model:
  name: cnn
  filtres: 64
  kernel_size: three
train:
  optimizer:
    lr: {loguniform: [1.0e-1, 1.0e-4]}
search: {algorithm: random, num_samples: 4}
"""


def sweepctl(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_validate_reports_every_mistake_with_path_and_line_and_no_traceback(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(THREE_MISTAKES)
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    err = result.stderr
    assert "3 problems" in err
    assert "model.filtres (line 5): unknown key; did you mean 'filters'?" in err
    assert "model.kernel_size (line 6)" in err and "valid integer" in err
    assert "train.optimizer.lr.loguniform (line 9)" in err and "lo must be < hi" in err


def test_validate_good_spec_prints_trials_and_budget_without_importing_torch_or_ray():
    code = (
        "import sys; from service.cli import main; rc = main(['validate', 'sweeps/quickstart.yaml']);"
        "heavy = sorted(m for m in ('torch', 'ray', 'kubernetes') if m in sys.modules);"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "OK quickstart: 12 trials" in result.stdout
    assert "at most 96 epochs" in result.stdout


def test_validate_with_overrides_and_a_missing_file():
    result = sweepctl("validate", "sweeps/quickstart.yaml", "--set", "train.epochs=2", "--set", "search.num_samples=3")
    assert result.returncode == 0
    assert "36 trials" in result.stdout and "at most 72 epochs" in result.stdout
    missing = sweepctl("validate", "sweeps/nope.yaml")
    assert missing.returncode == 2 and "cannot read the spec file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_refuses_an_existing_sweep_and_changes_nothing(tmp_path):
    existing = tmp_path / "runs" / "quickstart"
    existing.mkdir(parents=True)
    index = new_index("quickstart", Objective(metric="val_acc", mode="max"), max_epochs=8, num_trials=12, attempt=1)
    (existing / "sweep.json").write_text(index.model_dump_json())
    result = sweepctl("run", "sweeps/quickstart.yaml", "--set", f"storage.uri={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert "sweepctl resume quickstart" in result.stderr and "--new" in result.stderr
    assert (existing / "sweep.json").read_text() == index.model_dump_json()
    assert [p.name for p in existing.iterdir()] == ["sweep.json"]


@pytest.mark.slow
def test_rerunning_a_finished_sweep_with_resume_reruns_nothing_and_new_starts_another(tmp_path):
    """What a retried RayJob does (`run --resume`) after its sweep had finished: no trial runs again."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(deep_update(BASE_SPEC, {"name": "tiny", "storage": {"uri": str(tmp_path / "runs")},
                                                            "train": {"epochs": 1}})))
    first = sweepctl("run", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    store = SweepStore(str(tmp_path / "runs"), "tiny")
    before, before_trials = store.read_index(), store.read_trials()

    again = sweepctl("run", str(spec), "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    after = store.read_index()
    assert after.driver_attempt == 2 and after.status == "finished"
    assert after.trials == before.trials  # the same records: nothing trained again
    assert store.read_trials() == before_trials  # histories included

    other = sweepctl("run", str(spec), "--new")
    assert other.returncode == 0, other.stdout + other.stderr
    assert "running this one as tiny-2" in other.stdout
    assert SweepStore(str(tmp_path / "runs"), "tiny-2").read_index().trial_states == {"terminated": 1}


def test_every_shipped_spec_validates():
    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs, "sweeps/ has no specs"
    for path in specs:
        result = sweepctl("validate", str(path))
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert path.read_text().startswith("#"), f"{path.name} must open with a header comment"


RUNS_AS_WRITTEN = """\
name: runs-as-written
seed: -1
data: {name: digits}
model:
  name: cnn
  filters: {grid: [8, 16, 32, 64, 128]}
train:
  amp: off
  optimizer: {lr: {grid: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}}
search: {algorithm: grid, num_samples: 600}
scheduler:
  name: pbt
  mutations:
    model.num_conv_layers: {choice: [2, 3]}
    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
checkpoint: {keep: null}
"""


def test_validate_refuses_what_would_fail_at_run_with_paths_and_lines(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(RUNS_AS_WRITTEN)
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "seed (line 2): Input should be greater than or equal to 0, got -1" in result.stderr
    spec.write_text(RUNS_AS_WRITTEN.replace("seed: -1", "seed: 0"))
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    err = result.stderr
    assert "scheduler.mutations.model.num_conv_layers (line 14): model.num_conv_layers changes the model's parameters" in err
    assert "scheduler.mutations.train.optimizer.lr (line 15): a grid at train.optimizer.lr (line 9)" in err
    fifo = RUNS_AS_WRITTEN.replace("seed: -1", "seed: 0").replace("scheduler:\n  name: pbt", "scheduler:\n  name: fifo")
    spec.write_text(fifo)
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2
    # FIFO takes no mutations (the scheduler section is a union by name): said with the trial count
    assert "scheduler.mutations (line 13): applies to scheduler.name 'pbt' only: remove it here" in result.stderr
    spec.write_text(fifo.split("  mutations:")[0] + "checkpoint: {keep: null}\n")
    result = sweepctl("validate", str(spec))
    assert result.returncode == 2
    assert ("search.num_samples (line 10): model.filters 5 × train.optimizer.lr 4 × search.num_samples 600 "
            "= 12,000 trials > 10,000") in result.stderr
    result = sweepctl("validate", str(spec), "--max-trials", "12000")
    assert result.returncode == 0, result.stderr
    assert "OK runs-as-written: 12000 trials" in result.stdout


def test_amp_off_unquoted_as_documented_validates(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: amp-off\ndata: {name: digits}\nmodel: {name: mlp}\ntrain: {epochs: 1, amp: off}\n")
    result = sweepctl("validate", str(spec))
    assert result.returncode == 0, result.stderr
    result = sweepctl("validate", str(spec), "--set", "train.amp=on")
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- cancel, delete, resume here
def _sweep_in_storage(runs: Path, name: str, driver: dict | None = None) -> SweepStore:
    """A sweep's record as a driver leaves it: spec, index (running), a trial's file, driver.json."""
    store = SweepStore(str(runs), name)
    (runs / name / "t_00000").mkdir(parents=True)
    (runs / name / "spec.yaml").write_text(yaml.safe_dump({**BASE_SPEC, "name": name}))
    (runs / name / "t_00000" / "trial.json").write_text('{"trial_id": "t_00000"}')
    index = new_index(name, Objective(metric="val_acc", mode="max"), max_epochs=2, num_trials=1, attempt=1)
    (runs / name / "sweep.json").write_text(index.model_dump_json())
    if driver is not None:
        (runs / name / "driver.json").write_text(json.dumps(driver))
    return store


def _driver_record(pid: int, **changes) -> dict:
    """driver.json as trainer/driver/lock.py writes it for a driver with this pid, on this host."""
    from service.control.backends import _start_time

    record = {"attempt": 1, "host": socket.gethostname(), "pid": pid, "state": "running", "heartbeat_at": time.time(),
              "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(), "pid_start_time": _start_time(pid)}
    return {**record, **changes}


@pytest.fixture
def here(capsys, monkeypatch, tmp_path):
    """here(*args, server=None): sweepctl's main() in this process (no interpreter start per call),
    isolated as a user's shell would be: no SWEEPCTL_* but ``server``, an empty HOME."""
    from types import SimpleNamespace

    from service.cli import main

    def run(*args: str, server: str | None = None):
        for name in ("SWEEPCTL_SERVER", "SWEEPCTL_TOKEN", "XDG_CONFIG_HOME"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        if server:
            monkeypatch.setenv("SWEEPCTL_SERVER", server)
            monkeypatch.setenv("SWEEPCTL_TOKEN", "t")
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's refusals, and a service that cannot be reached (exit 1)
            code = exit.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_cancel_here_signals_only_a_driver_it_can_prove_and_marks_a_gone_one_cancelled(tmp_path, here):
    runs = tmp_path / "runs"
    stand_in = subprocess.Popen(["sleep", "60"])  # a process under the driver's pid: only its record differs
    try:
        records = {
            "unproven": _driver_record(stand_in.pid, boot_id=None, pid_start_time=None),  # an older driver.json
            "elsewhere": _driver_record(stand_in.pid, host="another-host"),  # heartbeat fresh: alive there
        }
        for why, record in records.items():
            store = _sweep_in_storage(runs, why, record)
            refused = here("cancel", why, "--storage", str(runs))
            assert refused.returncode == 2 and "nothing was changed" in refused.stderr, (why, refused.stderr)
            assert store.read_index().status == "running" and not Path(store.cancel_request_uri).exists(), why
        assert stand_in.poll() is None

        # Another start time: the pid is another process's now, the driver is gone; nothing is signalled.
        store = _sweep_in_storage(runs, "reused", _driver_record(stand_in.pid, pid_start_time=1))
        marked = here("cancel", "reused", "--storage", str(runs))
        assert marked.returncode == 0 and "its driver had already stopped" in marked.stdout, marked.stderr
        assert store.read_index().status == "cancelled" and stand_in.poll() is None
        user = store.read_cancel_request().by
        assert user.endswith("@" + socket.gethostname()) and store.read_index().stop_reason.startswith(f"cancelled by {user} at ")

        # The record proves the process: SIGTERM to it (a real driver records the cancel itself; this one
        # cannot, so the record is marked once it is gone).
        store = _sweep_in_storage(runs, "ours", _driver_record(stand_in.pid))
        stopped = here("cancel", "ours", "--storage", str(runs))
        assert stopped.returncode == 0, stopped.stderr
        assert f"SIGTERM to its driver, pid {stand_in.pid}" in stopped.stdout and stand_in.wait(timeout=10) == -15
        assert store.read_index().status == "cancelled"
        again = here("cancel", "ours", "--storage", str(runs))
        assert again.returncode == 2 and "already cancelled" in again.stderr
    finally:
        stand_in.kill()
        stand_in.wait()


def test_delete_here_says_what_it_would_delete_refuses_a_live_driver_and_spares_a_prefix_sibling(tmp_path, here):
    runs = tmp_path / "runs"
    driver = subprocess.Popen(["sleep", "60"])
    try:
        store = _sweep_in_storage(runs, "abc", _driver_record(driver.pid))
        sibling = _sweep_in_storage(runs, "abc-2")
        objects, sibling_objects = store.stored_objects(), sibling.stored_objects()

        running = here("delete", "abc", "--storage", str(runs), "--yes")
        assert running.returncode == 2 and "cancel it first" in running.stderr and store.stored_objects() == objects
        (runs / "abc" / "driver.json").write_text(json.dumps(_driver_record(driver.pid, state="cancelled")))
        objects = store.stored_objects()
        preview = here("delete", "abc", "--storage", str(runs))
        assert preview.returncode == 2 and "Traceback" not in preview.stderr
        assert f"{len(objects)} objects ({sum(objects.values())} bytes) under {store.prefix}" in preview.stdout
        assert "nothing deleted" in preview.stdout and store.stored_objects() == objects

        deleted = here("delete", "abc", "--storage", str(runs), "--yes")
        assert deleted.returncode == 0 and f"deleted sweep abc: {len(objects)} objects" in deleted.stdout
        assert not (runs / "abc").exists() and sibling.stored_objects() == sibling_objects
        assert driver.poll() is None  # deleting never signals anything
        gone = here("delete", "abc", "--storage", str(runs), "--yes")
        assert gone.returncode == 2 and "no sweep 'abc'" in gone.stderr
    finally:
        driver.kill()
        driver.wait()


def test_cancel_resume_and_delete_go_to_the_service_unless_storage_is_given(tmp_path, here):
    from live_service import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"  # a service that is configured but not running
    for verb in ("cancel", "resume", "delete"):
        served = here(verb, "some-sweep", server=nowhere)
        assert served.returncode == 1 and f"cannot reach the sweep service at {nowhere}" in served.stderr, verb
        extra = ["--no-preflight"] if verb == "resume" else []
        local = here(verb, "some-sweep", "--storage", str(tmp_path / "runs"), *extra, server=nowhere)
        assert local.returncode == 2 and "no sweep 'some-sweep' under" in local.stderr, (verb, local.stderr)
    both = here("resume", "some-sweep", "--storage", "x", "--server", nowhere)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    local_only = here("resume", "some-sweep", "--top", "3", server=nowhere)
    assert local_only.returncode == 2 and "--top: only for a resume here" in local_only.stderr
