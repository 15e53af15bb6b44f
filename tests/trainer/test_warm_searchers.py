"""What a warm start hands Ray Tune's searchers (trainer/driver/conditional.py), read back from
the real searchers: Optuna's study and hyperopt's trial history hold the earlier trials, each
complete with its result, before the first proposal; a grid's plan leaves out what was evaluated."""

from __future__ import annotations

import optuna
import yaml

from service.core import warm_start
from service.core.loading import parse_spec
from trainer.driver import conditional, space
from warm_sweeps import config, earlier_sweep, spec_data


def evaluated(spec):
    return [e for earlier in warm_start.load(spec) for e in earlier.trials]


def tune_searcher(spec, evaluated_trials):
    """The searcher as Tune drives it: search properties set (the param space is empty), then asked."""
    search = space.searcher(spec, max_concurrent=1, evaluated=evaluated_trials)
    search.set_search_properties(None, None, {})
    return search


def innermost(search):
    while hasattr(search, "searcher"):
        search = search.searcher
    return search


def test_optuna_is_told_every_earlier_trial_inside_its_space_before_it_proposes(tmp_path):
    earlier_sweep(tmp_path, "first", [
        ("terminated", config([16], 1e-3), [0.5, 0.7]),
        ("stopped_early", config([32], 5e-3), [0.4]),
        ("terminated", config([32], 5e-2), [0.2, 0.3]),  # lr outside this sweep's [1e-4, 1e-2]
    ], train={"optimizer": {"lr": {"loguniform": [1e-4, 1e-1]}}})
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={"warm_start": {"sweeps": ["first"]}})))
    search = tune_searcher(spec, evaluated(spec))
    proposal = search.suggest("new-1")
    study = innermost(search)._ot_study
    told, asked = study.trials[:2], study.trials[2:]
    assert [t.state for t in told] == [optuna.trial.TrialState.COMPLETE] * 2
    plan = conditional.Plan(spec)
    assert [plan.canonical(t.params) for t in told] == [config([16], 1e-3), config([32], 5e-3)]
    assert [t.value for t in told] == [0.7, 0.4]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert len(asked) == 1 and asked[0].state == optuna.trial.TrialState.RUNNING
    assert set(proposal) == {"model.hidden_sizes", "train.optimizer.lr"}
    assert conditional.told_count(spec, evaluated(spec)) == 2


def test_a_two_objective_optuna_study_is_told_both_values(tmp_path):
    earlier_sweep(tmp_path, "first", [("terminated", config([16], 1e-3), [0.5, 0.7])])
    data = spec_data(tmp_path, "second", objectives=[{"metric": "val_acc", "mode": "max"}, {"metric": "params", "mode": "min"}],
                     search={"warm_start": {"sweeps": ["first"]}})
    del data["objective"]
    spec = parse_spec(yaml.safe_dump(data))
    search = tune_searcher(spec, evaluated(spec))
    search.suggest("new-1")
    (told, _asked) = innermost(search)._ot_study.trials
    assert told.values == [0.7, 1000]


def test_hyperopt_is_told_the_earlier_trials_of_a_conditional_space_as_done_with_their_loss(tmp_path):
    sgd = {"name": "sgd", "lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.5, 0.99]}}
    adam = {"name": "adam", "lr": {"loguniform": [1e-4, 1e-2]}}
    optimizers = {"model": {"hidden_sizes": [16]}, "train": {"optimizer": {"choice": [sgd, adam]}}}
    with_sgd = {"train.optimizer.name": "sgd", "train.optimizer.lr": 0.01, "train.optimizer.momentum": 0.9}
    with_adam = {"train.optimizer.name": "adam", "train.optimizer.lr": 0.001}
    earlier_sweep(tmp_path, "first", [("terminated", with_sgd, [0.6]), ("terminated", with_adam, [0.8])],
                  search={"algorithm": "random"}, **optimizers)
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={
        "algorithm": "hyperopt", "warm_start": {"sweeps": ["first"]}}, **optimizers)))
    search = tune_searcher(spec, evaluated(spec))
    proposal = search.suggest("new-1")
    history = innermost(search)._hpopt_trials.trials
    told = history[:2]
    assert [t["result"] for t in told] == [{"loss": -0.6, "status": "ok"}, {"loss": -0.8, "status": "ok"}]
    vals = [{k: v for k, v in t["misc"]["vals"].items() if v} for t in told]
    assert vals == [{"train.optimizer": [0], "train.optimizer.choice[0].lr": [0.01], "train.optimizer.choice[0].momentum": [0.9]},
                    {"train.optimizer": [1], "train.optimizer.choice[1].lr": [0.001]}]
    assert len(history) == 3 and proposal["train.optimizer.name"] in ("sgd", "adam")


def test_a_warm_started_grid_plans_only_the_points_no_earlier_trial_evaluated(tmp_path):
    grid = {"model": {"hidden_sizes": {"grid": [[16], [32]]}}, "train": {"optimizer": {"lr": {"grid": [1e-3, 1e-2]}}}}
    earlier_sweep(tmp_path, "first", [
        ("terminated", config([16], 1e-3), [0.7]),
        ("error", config([32], 1e-3), [0.1]),  # not evaluated: runs again
        ("terminated", config([16], 1e-3), [0.71]),  # a second trial of the same point
    ], search={"algorithm": "grid"}, **grid)
    spec = parse_spec(yaml.safe_dump(spec_data(tmp_path, "second", search={
        "algorithm": "grid", "num_samples": 2, "warm_start": {"sweeps": ["first"]}}, **grid)))
    remaining, copied = conditional.warm_grid(spec, evaluated(spec))
    assert [e.trial.trial_id for e in copied] == ["abcde_00000", "abcde_00002"]  # one per planned repeat
    assert len(remaining) == 8 - 2 and config([16], 1e-3) not in remaining
    assert remaining.count(config([32], 1e-3)) == 2
    search = tune_searcher(spec, evaluated(spec))
    proposed = []
    for k in range(6):  # one at a time (max_concurrent 1)
        proposed.append(search.suggest(f"t{k}"))
        search.on_trial_complete(f"t{k}", {"val_acc": 0.5})
    assert proposed == remaining and search.suggest("t7") == "FINISHED"
