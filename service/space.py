"""SweepSpec → Ray Tune objects. Ray is imported inside the functions: `sweepctl validate` stays light."""

from __future__ import annotations

from typing import Any

from service.spec import (
    Choice,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    SweepSpec,
    Uniform,
    primitive_values,
    search_space,
)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Flat Tune param space keyed by dotted spec paths: {"model.filters": tune.grid_search([..])}."""
    return {path: _domain(primitive) for path, primitive in search_space(spec).items()}


def _domain(primitive):
    from ray import tune

    values = primitive_values(primitive)
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


def searcher(spec: SweepSpec, max_concurrent: int | None = None):
    """Grid and random both go through Tune's variant generator; the seed makes samples repeatable.
    ``max_concurrent`` caps running trials (None: as many as the cluster's resources allow)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent or 0)


def scheduler(spec: SweepSpec):
    """Trial schedulers count time in epochs (Tune's training_iteration: one report per epoch)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s, max_epochs = spec.scheduler, spec.train.epochs
    if s.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
        )
    if s.name == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration", max_t=max_epochs, reduction_factor=s.reduction_factor
        )
    return FIFOScheduler()
