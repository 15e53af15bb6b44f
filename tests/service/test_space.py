"""Spec → Tune search: grids under early-stopping schedulers run in a seeded random order."""

from __future__ import annotations

import itertools

import pytest

from conftest import BASE_SPEC, deep_update
from trainer.driver import space
from service.core.spec import SweepSpec

GRID = {"model": {"filters": {"grid": [4, 8, 16]}, "dropout": {"grid": [0.0, 0.25]}},
        "train": {"optimizer": {"lr": {"grid": [1.0e-3, 3.0e-3]}}}}


def spec(**changes) -> SweepSpec:
    return SweepSpec.model_validate(deep_update(deep_update(BASE_SPEC, GRID), changes))


def test_an_asha_grid_runs_every_point_once_in_an_order_set_by_the_seed():
    asha = spec(scheduler={"name": "asha"}, search={"algorithm": "grid", "num_samples": 2})
    assert space.runs_grid_shuffled(asha)
    points = space.shuffled_grid_points(asha)
    in_order = [dict(zip(["model.filters", "model.dropout", "train.optimizer.lr"], combo))
                for combo in itertools.product([4, 8, 16], [0.0, 0.25], [1.0e-3, 3.0e-3])]
    assert space.num_samples(asha) == len(points) == 2 * len(in_order)
    assert sorted(map(str, points)) == sorted(map(str, in_order * 2))  # every point, num_samples times
    assert points != in_order * 2
    assert points == space.shuffled_grid_points(asha)  # the same seed, the same order
    assert points != space.shuffled_grid_points(spec(seed=1, scheduler={"name": "asha"},
                                                     search={"algorithm": "grid", "num_samples": 2}))


def test_other_sweeps_keep_tunes_own_order():
    assert not space.runs_grid_shuffled(spec())  # fifo: order changes nothing
    assert not space.runs_grid_shuffled(spec(scheduler={"name": "asha"}, search={"algorithm": "random", "num_samples": 3}))
    data = deep_update(BASE_SPEC, {"scheduler": {"name": "asha"}})
    data["model"] = {"grid": [{"name": "mlp", "hidden_sizes": [32]}, {"name": "cnn", "filters": 8}]}
    whole_models = SweepSpec.model_validate(data)
    assert not space.runs_grid_shuffled(whole_models)  # dict values would read as nested parameters
    assert space.num_samples(spec()) == 1


# ----------------------------------------------------------------------------- conditional spaces
SGD = {"name": "sgd", "lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.8, 0.99]}}
ADAM = {"name": "adam", "lr": {"loguniform": [1e-4, 1e-2]}}


def conditional(algorithm: str, optimizers: dict, seed: int = 0, **changes) -> SweepSpec:
    data = deep_update(BASE_SPEC, {"seed": seed, "search": {"algorithm": algorithm, "num_samples": 6},
                                   "model": {"filters": {"choice": [4, 8]}}, **changes})
    data["train"]["optimizer"] = optimizers
    return SweepSpec.model_validate(data)


def proposals(spec: SweepSpec, n: int) -> list[dict]:
    """What the spec's searcher proposes, one trial at a time, each told a result before the next."""
    searcher = space.searcher(spec)
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        out.append(config)
        searcher.on_trial_result(f"t{i}", {"val_acc": 0.5 + 0.01 * (i % 3), "training_iteration": 1})
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5 + 0.01 * (i % 3), "training_iteration": 1})
    return out


def in_its_branch(config: dict) -> bool:
    """The config holds its branch's keys only, each value within that branch's own bounds."""
    if config["train.optimizer.name"] == "sgd":
        return (set(config) == {"model.filters", "train.optimizer.name", "train.optimizer.lr", "train.optimizer.momentum"}
                and 1e-3 <= config["train.optimizer.lr"] <= 1e-1 and 0.8 <= config["train.optimizer.momentum"] <= 0.99)
    return (set(config) == {"model.filters", "train.optimizer.name", "train.optimizer.lr"}
            and 1e-4 <= config["train.optimizer.lr"] <= 1e-2)


def test_a_conditional_grid_runs_each_branchs_own_points_once_in_a_seeded_order():
    grid = {"grid": [{"name": "sgd", "lr": {"grid": [0.1, 0.01]}, "momentum": {"grid": [0.8, 0.9]}},
                     {"name": "adam", "lr": {"grid": [1e-3, 3e-3]}}]}
    changes = {"model": {"filters": 8}, "search": {"algorithm": "grid", "num_samples": 1}, "scheduler": {"name": "asha"}}
    spec = conditional("grid", grid, **changes)
    assert space.param_space(spec) == {}  # the searcher holds the whole space
    points = proposals(spec, 6)
    assert space.num_samples(spec) == 6
    expected = [{"train.optimizer.name": "sgd", "train.optimizer.lr": lr, "train.optimizer.momentum": m}
                for lr in (0.1, 0.01) for m in (0.8, 0.9)]
    expected += [{"train.optimizer.name": "adam", "train.optimizer.lr": lr} for lr in (1e-3, 3e-3)]
    assert sorted(map(str, points)) == sorted(map(str, expected)) and points != expected  # all, shuffled (asha)
    assert points == proposals(spec, 6)  # the seed's order
    assert space.searcher(spec).suggest("t") is not None and proposals(spec, 7)[-1] == "FINISHED"


@pytest.mark.parametrize("algorithm", ["random", "optuna", "hyperopt"])
def test_every_searcher_proposes_only_the_branchs_parameters_and_the_seed_fixes_them(algorithm):
    spec = conditional(algorithm, {"choice": [SGD, ADAM]})
    configs = proposals(spec, 6)
    assert all(in_its_branch(c) for c in configs), configs
    assert {c["train.optimizer.name"] for c in configs} == {"sgd", "adam"}
    assert configs == proposals(conditional(algorithm, {"choice": [SGD, ADAM]}), 6)  # same spec and seed
    assert configs != proposals(conditional(algorithm, {"choice": [SGD, ADAM]}, seed=1), 6)
