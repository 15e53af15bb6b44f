"""A real sweep through the service: uvicorn + the API + the local backend (a `sweepctl run` subprocess
with its own embedded Ray), driven by `sweepctl submit/status/list/logs/cancel` as a user would."""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml
from live_service import serve, sweepctl

from conftest import BASE_SPEC
from service.control.api import create_app
from service.control.backends import LocalBackend
from service.core.record import SweepStore

TOKEN = "e2e-token"


def _spec_file(tmp_path, name: str, **changes) -> str:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(name=name, storage={"uri": str(tmp_path / "runs")}, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _wait_for(predicate, what: str, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_sweep_runs_to_completion_through_the_service_and_another_is_cancelled(tmp_path):
    backend = LocalBackend(tmp_path / "service", grace_seconds=45)
    with serve(create_app(backend, token=TOKEN)) as url:
        def cli(*args):
            return sweepctl(*args, server=url, token=TOKEN, home=tmp_path)

        # 2 trials (filters 4 and 8), 1 epoch each, on the bundled digits.
        model = {**BASE_SPEC["model"], "filters": {"grid": [4, 8]}}
        train = {**BASE_SPEC["train"], "epochs": 1}
        submitted = cli("submit", _spec_file(tmp_path, "svc-digits", model=model, train=train))
        assert submitted.returncode == 0, submitted.stderr
        assert "submitted svc-digits: running (2 trials)" in submitted.stdout

        def finished():
            out = cli("status", "svc-digits").stdout
            return out if out.startswith(("svc-digits: succeeded", "svc-digits: failed")) else None

        status = _wait_for(finished, "svc-digits to finish")
        assert status.startswith("svc-digits: succeeded"), status + cli("logs", "svc-digits").stdout
        index = SweepStore(str(tmp_path / "runs"), "svc-digits").read_index()
        assert index.trial_states == {"terminated": 2}
        assert "trials: terminated 2 (of 2 planned; driver: finished)" in status
        best_acc = index.best.best.val_acc
        assert f"best: val_acc {best_acc:.4f} (trial {index.best_trial}, epoch 1)" in status

        # Per-trial lines and a trial's own log, through the service's routes.
        trials = cli("trials", "svc-digits", "--json")
        assert trials.returncode == 0, trials.stderr
        body = json.loads(trials.stdout)
        assert body["total"] == 2 and body["trials"][0]["trial_id"] == index.best_trial  # best first
        assert {t["trial_id"] for t in body["trials"]} == {t.trial_id for t in index.trials}
        trial_log = cli("logs", "svc-digits", "--trial", index.best_trial)
        assert trial_log.returncode == 0, trial_log.stderr
        assert f"===== trial {index.best_trial}: attempt 1" in trial_log.stdout

        listed = cli("list").stdout
        assert any(line.split()[:2] == ["svc-digits", "succeeded"] for line in listed.splitlines()), listed
        logs = cli("logs", "svc-digits").stdout
        assert "svc-digits: 2 trials" in logs and "results:" in logs  # the driver's own output

        # A long sweep, cancelled once it has started training: its whole process group ends.
        long_train = {**BASE_SPEC["train"], "epochs": 1000}
        assert cli("submit", _spec_file(tmp_path, "svc-cancel", train=long_train)).returncode == 0
        _wait_for(lambda: "trials: running 1" in cli("status", "svc-cancel").stdout, "svc-cancel to train")
        cancelled = cli("cancel", "svc-cancel")
        assert cancelled.returncode == 0 and cancelled.stdout.strip() == "svc-cancel: cancelled"
        exit_code = tmp_path / "service" / "svc-cancel" / "exit_code"
        _wait_for(exit_code.exists, "the cancelled sweep's process to end", timeout=60)
        assert int(exit_code.read_text()) != 0
        assert cli("status", "svc-cancel").stdout.startswith("svc-cancel: cancelled")
        again = cli("cancel", "svc-cancel")
        assert again.returncode == 2 and "already cancelled" in again.stderr
        final = SweepStore(str(tmp_path / "runs"), "svc-cancel").read_index()
        # The driver was stopped, not allowed to finish, and the record says it was a cancel.
        assert final.status == "cancelled" and final.stop_reason.startswith("cancelled by the sweep service")
        assert "running" not in final.trial_states

        # A cancelled sweep is not stuck: resubmitting its spec resumes it.
        assert cli("submit", _spec_file(tmp_path, "svc-cancel", train=long_train)).returncode == 0
        resumed = SweepStore(str(tmp_path / "runs"), "svc-cancel")
        _wait_for(lambda: cli("status", "svc-cancel").stdout.startswith("svc-cancel: running")
                  and resumed.read_index().driver_attempt == 2, "svc-cancel to resume as attempt 2")
        assert cli("cancel", "svc-cancel").returncode == 0
        _wait_for(exit_code.exists, "the resumed sweep's process to end", timeout=60)
        assert resumed.read_index().status == "cancelled"
