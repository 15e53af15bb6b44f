"""Errors no restart can fix are not retried, in real sweeps on real local Ray: the trial fails at
once with its own exception, the sweep goes on, and ``resources.max_failures`` is left to crashes
(a SIGKILLed trial still restarts: test_local_sweeps.py's killed-trial test).
The rule and the hook alone, with real exception objects: tests/trainer/test_final_errors.py."""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import BASE_SPEC, deep_update
from service.core.record import SweepStore
from service.core.spec import SweepSpec
from trainer.driver.sweep import run_sweep

pytestmark = pytest.mark.slow
MISSING = "/nonexistent/resnet18-weights.pt"
# One grid point trains; the other's weights file does not exist: FileNotFoundError while building
# the model, on every attempt (run_sweep in-process: no CLI pre-flight in front of it).
MODELS = {"grid": [
    {"name": "cnn", "num_conv_layers": 1, "filters": 8, "num_fc_layers": 1},
    {"name": "resnet", "depth": 18, "mode": "frozen", "weights_uri": MISSING},
]}


def _seconds(record) -> float:
    return (datetime.fromisoformat(record.updated_at) - datetime.fromisoformat(record.started_at)).total_seconds()


def test_a_missing_file_fails_its_trial_at_once_and_the_sweep_goes_on(ray_local, tmp_path):
    base = {k: v for k, v in BASE_SPEC.items() if k != "model"}  # the grid replaces the model
    spec = SweepSpec.model_validate(deep_update(base, {
        "name": "final-missing", "model": MODELS, "storage": {"uri": str(tmp_path / "runs")},
        "resources": {"max_failures": 3}}))
    lines: list[str] = []
    index = run_sweep(spec, echo=lines.append)

    assert index.status == "finished" and index.trial_states == {"error": 1, "terminated": 1}
    store = SweepStore(spec.storage.uri, spec.name)
    by_status = {t.status: t for t in store.read_trials(index)}
    failed, good = by_status["error"], by_status["terminated"]
    assert failed.restarts == 0 and failed.error.attempt == 1
    assert failed.error.type == "FileNotFoundError" and MISSING in failed.error.message
    assert failed.error.final is True
    assert failed.stop_reason.startswith("FileNotFoundError: ")
    assert _seconds(failed) < 60  # one attempt (4 would each load the data and the model again)
    assert good.restarts == 0 and [h.epoch for h in good.history] == [1, 2]

    # The driver: one line for the failure, saying it was not retried; no restart
    failures = [line for line in lines if " failed" in line]
    assert failures == [f"trial {failed.trial_id} failed: {failed.stop_reason} (not retried: a restart cannot fix "
                        f"FileNotFoundError; traceback: sweepctl logs {spec.name} --trial {failed.trial_id})"]
    assert not [line for line in lines if "restarting" in line]
    # The trial's log: one attempt, the original traceback (not the marker's)
    log = store.read_trial_log(failed.trial_id)
    assert "Traceback (most recent call last)" in log and "FileNotFoundError" in log and MISSING in log
    assert "FinalTrialError" not in log


def test_an_n_worker_trial_whose_workers_cannot_find_a_file_is_not_retried(ray_local, make_spec):
    """Ray Train V2 raises WorkerGroupError in the trial; the ranks' own FileNotFoundError decides."""
    spec = make_spec(name="final-ddp", model=MODELS["grid"][1],
                     resources={"workers_per_trial": 2, "cpus_per_worker": 1, "max_failures": 2})
    lines: list[str] = []
    index = run_sweep(spec, echo=lines.append)

    (trial,) = SweepStore(spec.storage.uri, spec.name).read_trials(index)
    assert trial.status == "error" and trial.restarts == 0
    assert (trial.error.type, trial.error.final) == ("FileNotFoundError", True)
    assert MISSING in trial.error.message
    assert len([line for line in lines if " failed" in line]) == 1
    assert not [line for line in lines if "restarting" in line]
