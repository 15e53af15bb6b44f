"""Warm starts, torch- and Ray-free: finding the earlier sweeps, refusing those that answer another
question (naming the parameter), picking their evaluated trials (service/core/warm_start.py), and
the spec's own rules for search.warm_start (service/core/spec.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.core import preflight, storage, warm_start
from service.core.loading import SpecError, parse_spec
from service.core.spec import SweepSpec
from warm_sweeps import config, earlier_sweep, spec_data

REPO = Path(__file__).resolve().parents[2]


def test_the_evaluated_trials_of_an_earlier_sweep_are_loaded_with_their_last_epochs_values(tmp_path):
    earlier_sweep(tmp_path, "first", [
        ("terminated", config([16], 1e-3), [0.5, 0.7]),
        ("stopped_early", config([32], 5e-3), [0.4]),
        ("error", config([32], 2e-3), [0.6]),
        ("rejected", config([16], 1e-4), None),
    ])
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={"warm_start": {"sweeps": ["first"]}})))
    (first,) = warm_start.load(spec)
    assert first.name == "first" and first.storage == storage.normalize(str(tmp_path / "runs"))
    assert [(e.config, e.values) for e in first.trials] == [(config([16], 1e-3), (0.7,)), (config([32], 5e-3), (0.4,))]
    assert first.not_evaluated == 2


def test_several_objectives_take_each_value_at_the_last_epoch_and_a_uri_names_a_sweep_elsewhere(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    earlier_sweep(tmp_path / "x", "first", [("terminated", config([16], 1e-3), [0.5, 0.7])],
                  storage={"uri": str(elsewhere)})
    data = spec_data(tmp_path, "second", objectives=[{"metric": "val_acc", "mode": "max"}, {"metric": "params", "mode": "min"}],
                     search={"warm_start": {"sweeps": [f"file://{elsewhere}/first"]}})
    del data["objective"]
    spec = parse_spec(yaml.safe_dump(data))
    (first,) = warm_start.load(spec)
    assert first.storage == str(elsewhere) and [e.values for e in first.trials] == [(0.7, 1000)]


def test_missing_and_incompatible_sweeps_are_all_reported_naming_the_parameter_that_differs(tmp_path):
    earlier_sweep(tmp_path, "other-epochs", [], train={"epochs": 3})
    earlier_sweep(tmp_path, "fixed-lr", [], train={"optimizer": {"lr": 1e-3}})
    earlier_sweep(tmp_path, "other-seed", [], seed=7)
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={"warm_start": {
        "sweeps": ["absent", "other-epochs", "fixed-lr", "other-seed"]}})))
    with pytest.raises(warm_start.WarmStartError) as caught:
        warm_start.load(spec)
    problems = [str(p) for p in caught.value.problems]
    assert len(problems) == 4, problems
    assert problems[0].startswith("search.warm_start.sweeps[0]: no sweep 'absent' in ")
    assert problems[1].startswith("search.warm_start.sweeps[1]: train.epochs is 2 here but 3 there (sweep 'other-epochs')")
    assert problems[2].startswith("search.warm_start.sweeps[2]: train.optimizer.lr is searched here but fixed at 0.001 "
                                  "there (sweep 'fixed-lr')")
    assert problems[3].startswith("search.warm_start.sweeps[3]: seed is 0 here but 7 there (sweep 'other-seed')")
    # pre-flight (sweepctl run) reports them with every other problem, before anything starts
    with pytest.raises(preflight.PreflightError) as caught:
        preflight.check(spec, source="second.yaml")
    assert [str(p) for p in caught.value.problems][-4:] == problems


def test_ranges_may_differ_and_searched_values_are_not_compared(tmp_path):
    earlier_sweep(tmp_path, "first", [], model={"hidden_sizes": {"choice": [[8], [64]]}},
                  train={"optimizer": {"lr": {"loguniform": [1e-5, 1e-1]}}}, search={"algorithm": "random"},
                  scheduler={"name": "asha"}, resources={"max_concurrent_trials": 1})
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={"warm_start": {"sweeps": ["first"]}})))
    assert [e.name for e in warm_start.load(spec)] == ["first"]


def test_the_spec_refuses_a_warm_start_from_itself_under_pbt_and_a_reference_that_is_no_sweep(tmp_path):
    data = spec_data(tmp_path, "second", search={"algorithm": "random", "warm_start": {
        "sweeps": ["second", f"{tmp_path}/runs/second"]}},
        scheduler={"name": "pbt", "mutations": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}})
    with pytest.raises(SpecError) as caught:
        parse_spec(yaml.safe_dump(data))
    text = str(caught.value)
    assert "search.warm_start (line" in text and "scheduler 'pbt' trains its population together" in text
    assert "search.warm_start.sweeps[0] (line" in text and "search.warm_start.sweeps[1] (line" in text
    assert "is this sweep: a warm start reads earlier sweeps (to continue this one: sweepctl resume second)" in text
    with pytest.raises(SpecError, match=r"sweeps\[0\].*'s3://bucket/Not_A_Name' is not a sweep"):
        parse_spec(yaml.safe_dump(spec_data(tmp_path, "x", search={"warm_start": {"sweeps": ["s3://bucket/Not_A_Name"]}})))


def test_a_spec_without_a_warm_start_dumps_no_key_for_it(tmp_path):
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "plain")))
    assert "warm_start" not in spec.model_dump(mode="json")["search"]
    warm = parse_spec(yaml.safe_dump(spec_data(tmp_path, "warm", search={"warm_start": {"sweeps": ["a"]}})))
    assert warm.model_dump(mode="json")["search"]["warm_start"] == {"sweeps": ["a"]}
    assert SweepSpec.model_validate(warm.model_dump(mode="json")) == warm


def test_validate_checks_earlier_sweeps_on_local_storage_and_leaves_s3_ones_to_run(tmp_path, monkeypatch):
    earlier_sweep(tmp_path, "other-epochs", [], train={"epochs": 3})
    data = spec_data(tmp_path, "second", search={"warm_start": {"sweeps": ["absent", "other-epochs"]}})
    spec_file = tmp_path / "second.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "service.cli", "validate", str(spec_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "search.warm_start.sweeps[0]: no sweep 'absent' in " in result.stderr
    assert "search.warm_start.sweeps[1]: train.epochs is 2 here but 3 there (sweep 'other-epochs')" in result.stderr
    # An s3:// sweep is network: validate (no network, no writes) leaves it to `sweepctl run`'s
    # pre-flight. The endpoint answers nothing, so a read would be a StorageError problem here.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    remote = parse_spec(yaml.safe_dump(spec_data(tmp_path, "third", search={"warm_start": {
        "sweeps": ["s3://bucket/team/first"]}})))
    assert preflight.warm_start_needs_network(remote)
    preflight.check(remote, source="third.yaml", local_only=True)
    with pytest.raises(preflight.PreflightError) as caught:
        preflight.check(remote, source="third.yaml", check_storage=False)
    assert [p.path for p in caught.value.problems] == ["search.warm_start.sweeps[0]"]


def test_the_service_answers_422_for_a_missing_or_mismatched_earlier_sweep_and_submits_nothing(tmp_path):
    from fastapi.testclient import TestClient

    from service.control.api import create_app
    from service.control.backends import LocalBackend

    earlier_sweep(tmp_path, "other-epochs", [], train={"epochs": 3})
    backend = LocalBackend(tmp_path / "service")
    client = TestClient(create_app(backend, token="test-token-0123456789"))
    spec = yaml.safe_dump(spec_data(tmp_path, "second", search={"warm_start": {"sweeps": ["absent", "other-epochs"]}}))
    answer = client.post("/sweeps", content=spec, headers={"Authorization": "Bearer test-token-0123456789",
                                                           "Content-Type": "application/yaml"})
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]["errors"]
    assert [e["path"] for e in errors] == ["search.warm_start.sweeps[0]", "search.warm_start.sweeps[1]"]
    assert "no sweep 'absent'" in errors[0]["message"] and "train.epochs is 2 here but 3 there" in errors[1]["message"]
    assert backend.list() == [] and not storage.exists(storage.join(str(tmp_path / "runs"), "second"))
