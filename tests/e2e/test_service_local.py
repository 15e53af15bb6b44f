"""A real sweep through the service: uvicorn + the API + the local backend (a `sweepctl run` subprocess
with its own embedded Ray), driven by `sweepctl submit/status/list/logs/cancel/resume/delete` as a user
would: one sweep runs to completion, another goes through the whole lifecycle (cancelled with a trial
finished and one training, listed as cancelled, resumed to the end, its data deleted)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml
from live_service import serve, sweepctl

from conftest import BASE_SPEC
from service.control.api import create_app
from service.control.backends import LocalBackend
from service.control.client import SweepClient
from service.core.record import TRIAL_RECORD, SweepStore

TOKEN = "e2e-token"


def _spec_file(tmp_path, name: str, **changes) -> str:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(name=name, storage={"uri": str(tmp_path / "runs")}, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _wait_for(predicate, what: str, timeout: float = 420, every: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_sweep_runs_to_completion_through_the_service_and_another_is_cancelled_resumed_and_deleted(tmp_path):
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

        # Two trials one after the other (1 epoch, then 60: ~4 s of training), cancelled once the first
        # has finished and the second trains: the process group ends, the sweep stays, cancelled.
        train = {**BASE_SPEC["train"], "epochs": {"grid": [1, 60]}}
        resources = {**BASE_SPEC["resources"], "max_concurrent_trials": 1}
        assert cli("submit", _spec_file(tmp_path, "svc-cancel", train=train, resources=resources)).returncode == 0
        store = SweepStore(str(tmp_path / "runs"), "svc-cancel")

        def one_finished_one_training():
            # The trials' own records, written at every epoch (the index is written at most every 2 s,
            # which could miss most of the second trial's ~4 s).
            trials = [store.read_trial(path.parent.name) for path in Path(store.uri).glob(f"*/{TRIAL_RECORD}")]
            statuses = sorted((t.status, t.epochs >= 1) for t in trials)
            return statuses == [("running", True), ("terminated", True)]

        _wait_for(one_finished_one_training, "svc-cancel's first trial to finish and its second to train", every=0.2)
        # sweepctl's own client, in this process: the cancel lands within milliseconds of the second
        # trial's first epoch (a `sweepctl cancel` process would take a second to start).
        assert SweepClient(url, TOKEN).cancel("svc-cancel")["state"] == "cancelled"
        exit_code = tmp_path / "service" / "svc-cancel" / "exit_code"
        _wait_for(exit_code.exists, "the cancelled sweep's process to end", timeout=60, every=0.5)
        assert int(exit_code.read_text()) != 0
        status = cli("status", "svc-cancel").stdout
        assert status.startswith("svc-cancel: cancelled") and "cancelled by admin via the sweep service at " in status
        listed = cli("list").stdout
        assert any(line.split()[:3] == ["svc-cancel", "cancelled", "admin"] for line in listed.splitlines()), listed
        again = cli("cancel", "svc-cancel")
        assert again.returncode == 2 and "already cancelled" in again.stderr
        stopped = store.read_index()
        # The driver was stopped, not allowed to finish, and the record says it was a cancel, by whom.
        assert stopped.status == "cancelled" and stopped.stop_reason.startswith("cancelled by admin via the sweep service at")
        assert "running" not in stopped.trial_states
        (finished,) = [t.trial_id for t in stopped.trials if t.status == "terminated"]
        finished_before = store.read_trial(finished)
        assert [h.attempt for h in finished_before.history] == [1]

        # Resumed through the API (`sweepctl resume` with a server): it runs to the end; the finished
        # trial is untouched, the other one continued from its checkpoint (each epoch recorded once).
        resumed = cli("resume", "svc-cancel")
        assert resumed.returncode == 0 and resumed.stdout.startswith("svc-cancel: running"), resumed.stderr
        _wait_for(exit_code.exists, "the resumed svc-cancel to finish", every=0.5)
        done = cli("status", "svc-cancel").stdout
        assert done.startswith("svc-cancel: succeeded"), done + cli("logs", "svc-cancel").stdout
        final = store.read_index()
        assert final.status == "finished" and final.driver_attempt == 2 and final.trial_states == {"terminated": 2}
        assert store.read_trial(finished) == finished_before
        (other,) = [t for t in store.read_trials() if t.trial_id != finished]
        assert [h.epoch for h in other.history] == list(range(1, 61))
        assert {h.attempt for h in other.history} == {1, 2}

        # Deleting its data: refused without --yes (what it would delete is said), then gone.
        objects = store.stored_objects()
        refused = cli("delete", "svc-cancel")
        assert refused.returncode == 2, refused.stderr
        assert f"{len(objects)} objects" in refused.stdout and store.prefix in refused.stdout
        assert store.stored_objects() == objects
        deleted = cli("delete", "svc-cancel", "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert not store.exists() and not (tmp_path / "service" / "svc-cancel").exists()
        assert [line.split()[0] for line in cli("list").stdout.splitlines()[1:]] == ["svc-digits"]
        assert SweepStore(str(tmp_path / "runs"), "svc-digits").read_index().trial_states == {"terminated": 2}
