"""SweepSpec → Ray Tune objects. Ray is imported inside the functions: `sweepctl validate` stays light."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from pydantic import BaseModel

from service.core.spec import (
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    SweepSpec,
    Uniform,
    conditional_sections,
    max_epochs,
    primitive_values,
    search_space,
)
from service.core.warm_start import Evaluated


def searcher_holds_the_space(spec: SweepSpec) -> bool:
    """A conditional space, or a warm start (its earlier results go to the searcher, or take
    points out of a grid's plan): the searcher in trainer/driver/conditional.py holds the whole space
    and Tune's param space is empty."""
    return bool(conditional_sections(spec)) or spec.search.warm_start is not None


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Flat Tune param space keyed by dotted spec paths: {"model.filters": tune.grid_search([..])}."""
    if searcher_holds_the_space(spec):
        return {}
    if runs_grid_shuffled(spec):
        from ray import tune

        # The points come from the searcher (shuffled_grid_points); this only names their values.
        return {path: tune.choice([_plain(v) for v in primitive_values(p)]) for path, p in search_space(spec).items()}
    return {path: _domain(primitive) for path, primitive in search_space(spec).items()}


def runs_grid_shuffled(spec: SweepSpec) -> bool:
    """Early-stopping schedulers judge each trial against those that reached a rung before it,
    and Ray runs a grid in order: when its first points are the weakest (a grid's lowest lr), they
    set the bar and almost nothing is stopped. Such grids run in a seeded random order instead
    (bench/README.md, digits, 48 points: ASHA 66% → 24% of the grid's epochs, HyperBand −0.9 pt →
    the grid's best). Same trials, same metrics; only which ones run how far changes. Grids of
    whole sections (models, augmentation lists) keep their order: Tune would read a dict value
    of a point as nested parameters."""
    primitives = search_space(spec).values()
    return (
        spec.search.algorithm == "grid"
        and early_stopping(spec)
        and bool(primitives)
        and all(isinstance(p, Grid) for p in primitives)
        and all(isinstance(v, (int, float, str, bool)) for p in primitives for v in primitive_values(p))
    )


def early_stopping(spec: SweepSpec) -> bool:
    """A scheduler that judges trials against those that reached a rung before them."""
    return spec.scheduler.name in ("asha", "hyperband", "median")


def shuffled_grid_points(spec: SweepSpec) -> list[dict]:
    """Every grid point (× search.num_samples), in an order shuffled by the spec's seed."""
    import itertools
    import random

    paths = list(search_space(spec))
    values = [primitive_values(p) for p in search_space(spec).values()]
    points = [dict(zip(paths, combo)) for combo in itertools.product(*values)] * spec.search.num_samples
    random.Random(spec.seed).shuffle(points)
    return points


def num_samples(spec: SweepSpec) -> int:
    """Tune's num_samples: a shuffled grid is a list of points, one trial each (so is a
    conditional space's grid/random search)."""
    if searcher_holds_the_space(spec):
        from trainer.driver import conditional

        return conditional.trials_planned(spec)
    return len(shuffled_grid_points(spec)) if runs_grid_shuffled(spec) else spec.search.num_samples


def _domain(primitive):
    from ray import tune

    values = [_plain(v) for v in primitive_values(primitive)]
    if isinstance(primitive, Grid):
        return tune.grid_search(list(values))
    if isinstance(primitive, Choice):
        return tune.choice(list(values))
    if isinstance(primitive, RandInt):
        return tune.randint(*values)
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if isinstance(primitive, Uniform):
        lo, hi = values
        return tune.randint(lo, hi + 1) if integers else tune.uniform(lo, hi)  # int field: hi included
    if isinstance(primitive, LogUniform):
        lo, hi = values
        return tune.lograndint(lo, hi + 1) if integers else tune.loguniform(lo, hi)
    if isinstance(primitive, QUniform):
        return tune.qrandint(*values) if integers else tune.quniform(*values)
    raise TypeError(f"not a search primitive: {primitive!r}")


def _plain(value):
    """Trial configs must be plain data (they go into the sweep record): models become dicts of
    what the spec set (defaults are filled in again when the trial's spec is validated)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def searcher(spec: SweepSpec, max_concurrent: int | None = None, evaluated: Sequence[Evaluated] = ()):
    """The search algorithm, seeded by the spec's seed so its proposals repeat run to run.
    ``max_concurrent`` caps running trials (None: as many as the cluster's resources allow);
    for TPE it also bounds how many proposals are made without the results of the others.
    ``evaluated``: a warm start's earlier trials (service/core/warm_start.py)."""
    algorithm = spec.search.algorithm
    if searcher_holds_the_space(spec):
        from ray.tune.search import ConcurrencyLimiter

        from trainer.driver import conditional

        search = conditional.searcher(spec, evaluated)
        return ConcurrencyLimiter(search, max_concurrent=max_concurrent) if max_concurrent else search
    if algorithm in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        points = shuffled_grid_points(spec) if runs_grid_shuffled(spec) else None
        return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed, max_concurrent=max_concurrent or 0)
    from ray.tune.search import ConcurrencyLimiter

    if algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Several objectives: the searcher gets them all (Tune's metric stays unset, see judged_by).
        # The same seeded TPESampler serves: it is multi-objective itself (MOTPE: past trials split by
        # non-domination rank, then hypervolume contribution), where NSGA-II would sample at random
        # for its first population of 50 trials, i.e. for the whole of most of our sweeps.
        several = ({"metric": [o.metric for o in spec.objectives], "mode": [o.mode for o in spec.objectives]}
                   if spec.objectives else {})
        tpe = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed), **several)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        tpe = HyperOptSearch(random_state_seed=spec.seed)
    return ConcurrencyLimiter(tpe, max_concurrent=max_concurrent) if max_concurrent else tpe


def _mutation_bounds(spec: SweepSpec) -> dict[str, tuple]:
    bounds = {}
    for path, primitive in spec.scheduler.mutations.items():
        if isinstance(primitive, (Uniform, LogUniform, QUniform, RandInt)):
            lo, hi = primitive_values(primitive)[:2]
            bounds[path] = (lo, hi - 1 if isinstance(primitive, RandInt) else hi)  # randint: hi excluded
    return bounds


def clamp_to_ranges(config: dict, bounds: dict[str, tuple]) -> dict:
    """PBT explore hook: clip perturbed values into their mutation's [lo, hi]."""
    for path, (lo, hi) in bounds.items():
        if path in config:
            config[path] = type(config[path])(min(max(config[path], lo), hi))
    return config


def tune_metric(spec: SweepSpec) -> dict:
    """TuneConfig's metric and mode: the one objective's. A multi-objective sweep sets none there
    (Tune would hand its one metric to the searcher, over the searcher's list): the searcher has
    them all, the scheduler the first (``judged_by``)."""
    return {} if spec.objectives else {"metric": spec.objective.metric, "mode": spec.objective.mode}


def judged_by(spec: SweepSpec) -> dict:
    """A multi-objective sweep's scheduler judges trials by the first objective (`sweepctl
    validate` says so: service/core/spec.py ``spec_notes``); otherwise Tune hands it its metric."""
    return {"metric": spec.objective.metric, "mode": spec.objective.mode} if spec.objectives else {}


def scheduler(spec: SweepSpec):
    """Trial schedulers count time in epochs (Tune's training_iteration: one report per epoch)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    from trainer.driver.hyperband import HyperBandStoppingAtMaxT

    s, max_t = spec.scheduler, max_epochs(spec)
    if s.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
            **judged_by(spec),
        )
    if s.name == "hyperband":
        return HyperBandStoppingAtMaxT(time_attr="training_iteration", max_t=max_t,
                                       reduction_factor=s.reduction_factor, **judged_by(spec))
    if s.name == "median":
        return MedianStoppingRule(
            time_attr="training_iteration", grace_period=s.grace_period, min_samples_required=s.min_samples,
            **judged_by(spec),
        )
    if s.name == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile,
            synch=s.synchronous,
            # keys are dotted spec paths, like the trial configs they mutate
            hyperparam_mutations={path: _domain(p) for path, p in s.mutations.items()},
            # PBT perturbs by ×1.2/×0.8 without clipping (0.99 momentum → 1.19): keep values in range
            custom_explore_fn=functools.partial(clamp_to_ranges, bounds=_mutation_bounds(spec)),
        )
    return FIFOScheduler()
