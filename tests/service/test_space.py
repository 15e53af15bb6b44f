"""Spec → Tune search: grids under early-stopping schedulers run in a seeded random order."""

from __future__ import annotations

import itertools

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
