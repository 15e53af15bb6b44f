"""Conditional search spaces on Ray Tune (service/core/spec.py, ``conditional_sections``).

A spec whose ``model`` or ``train.optimizer`` is a grid/choice over branches that hold primitives
of their own is searched here, whole (every primitive of the spec, in or out of a branch), by a
Tune ``Searcher``; the Tuner's param space is then empty. Whatever the algorithm, Tune gets each
trial's canonical config (flat, by dotted path: what its branch sets, plain or sampled), which is
what the trial trains with (``concrete``) and what the record keeps:

- grid/random: ``Variants`` hands out precomputed points: every grid point (a grid over branches
  crosses each branch with its own grids) × search.num_samples, each sampled primitive drawn from
  the spec's seed (a choice over branches: one branch per point, then its primitives); a grid
  under an early-stopping scheduler in a seeded shuffled order (``space.runs_grid_shuffled``'s
  reason);
- optuna: OptunaSearch (TPE, seeded) with a define-by-run space, ``OptunaSpace``: it draws the
  branch, then only that branch's parameters;
- hyperopt: HyperOptSearch (TPE, seeded) with a nested ``hp.choice`` per section.

A warm start (spec search.warm_start) searches here too, whatever its space: grid/random leave out
the planned points an earlier sweep evaluated (``warm_grid``: the driver copies those trials into
the record), the TPE searchers are told the earlier results before their first proposal
(``WarmOptunaSearch``, ``WarmHyperOptSearch``: Optuna study trials, hyperopt trial documents, each
COMPLETE/DONE with its value, as if this searcher had proposed them).

The TPE searchers name a branch's parameter by where it is written (train.optimizer.choice[0].lr,
SGD's lr apart from Adam's: Optuna refuses one name with two distributions, and they are different
parameters) and a branch by its index under the section's path; ``Canonical`` wraps them and
translates. A choice's value is searched as its index (Optuna's categorical holds scalars only).
"""

from __future__ import annotations

import itertools
import math
import pickle
import random
from dataclasses import dataclass
from typing import Any, Sequence

from ray.tune.search import Searcher
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from service.core.spec import Choice, Grid, SweepSpec, conditional_sections, num_trials, primitive_values, search_space
from service.core.warm_start import Evaluated, config_key
from trainer.driver import space as _space


@dataclass(frozen=True)
class Param:
    """One primitive as the searchers see it."""

    name: str  # the searcher's name: model.filters, train.optimizer.choice[0].lr
    key: str  # the trial config's key: model.filters, train.optimizer.lr
    kind: str  # grid, choice or sampled (a range)
    values: tuple = ()  # grid/choice: the values, as plain data
    domain: Any = None  # the Tune domain it is sampled from (a choice: of its indices)

    def value(self, raw: Any) -> Any:
        """The config value for what a searcher proposed (a choice proposes an index)."""
        if self.kind == "choice":
            return self.values[int(raw)]
        return self.domain.cast(raw)  # numpy scalars from hyperopt → int/float

    def sample(self, rng) -> Any:
        return self.value(self.domain.sample(random_state=rng))

    def raw(self, value: Any) -> Any:
        """What a searcher would have proposed for this config value (``value``'s inverse), or
        OUTSIDE when the value is not in this parameter's domain."""
        if self.kind in ("choice", "grid"):
            matches = [i for i, v in enumerate(self.values) if v == value and type(v) is type(value)]
            return OUTSIDE if not matches else (matches[0] if self.kind == "choice" else value)
        return value if _in_domain(self.domain, value) else OUTSIDE


OUTSIDE = object()


def _in_domain(domain, value: Any) -> bool:
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return isinstance(domain, Categorical) and value in domain.categories
    step = getattr(domain.get_sampler(), "q", None)  # quniform/qrandint: values on their grid only
    if step is not None and not math.isclose((value - domain.lower) / step, round((value - domain.lower) / step),
                                             abs_tol=1e-9):
        return False
    if isinstance(domain, Integer):  # upper excluded (space._domain adds 1 for a spec's inclusive bound)
        return float(value).is_integer() and domain.lower <= value < domain.upper + (1 if step else 0)
    if isinstance(domain, Float):
        return domain.lower <= value <= domain.upper
    return False


@dataclass(frozen=True)
class BranchPlan:
    fixed: dict  # what the branch sets to plain values, by config key (its name always)
    params: tuple[Param, ...]


@dataclass(frozen=True)
class Section:
    """A conditional section: the searchers pick one of its branches, under ``path``."""

    path: str  # train.optimizer
    kind: str  # grid or choice
    branches: tuple[BranchPlan, ...]


def _param(name: str, key: str, primitive) -> Param:
    from ray import tune

    if isinstance(primitive, Grid):
        return Param(name, key, "grid", tuple(_space._plain(v) for v in primitive_values(primitive)))
    if isinstance(primitive, Choice):
        values = tuple(_space._plain(v) for v in primitive_values(primitive))
        return Param(name, key, "choice", values, tune.choice(list(range(len(values)))))
    return Param(name, key, "sampled", (), _space._domain(primitive))


class Plan:
    """A spec's whole search space, in the spec's order: Params and Sections."""

    def __init__(self, spec: SweepSpec):
        sections = conditional_sections(spec)
        self.items: list[Param | Section] = []
        for path, primitive in search_space(spec).items():
            if path in sections:
                self.items.append(Section(path, sections[path][0].kind, tuple(
                    BranchPlan(dict(b.fixed), tuple(_param(b.name_of(k), k, p) for k, p in b.space.items()))
                    for b in sections[path])))
            else:
                self.items.append(_param(path, path, primitive))

    def canonical(self, proposed: dict) -> dict:
        """A TPE searcher's proposal (by searcher names; a section's branch index under its path)
        as the trial's config (by config keys, the branch's own only)."""
        flat = {}
        for name, value in proposed.items():  # hyperopt nests each section's branch: {path: {path: i, ...}}
            flat.update(value if isinstance(value, dict) else {name: value})
        config = {}
        for item in self.items:
            if isinstance(item, Section):
                branch = item.branches[int(flat[item.path])]
                config.update(branch.fixed)
                config.update({p.key: p.value(flat[p.name]) for p in branch.params})
            else:
                config[item.key] = item.value(flat[item.name])
        return config

    def searcher_params(self, config: dict) -> dict | None:
        """``canonical``'s inverse: a trial's config by the TPE searchers' names and values (a
        section's branch index under its path, a choice's index), or None when the config lies
        outside this space (a value out of range, a branch it does not have)."""
        out = {}
        for item in self.items:
            if isinstance(item, Section):
                chosen = [i for i, b in enumerate(item.branches)
                          if all(config.get(k, OUTSIDE) == v for k, v in b.fixed.items())]
                if len(chosen) != 1:
                    return None
                out[item.path] = chosen[0]
                params = item.branches[chosen[0]].params
            else:
                params = (item,)
            for param in params:
                raw = param.raw(config.get(param.key, OUTSIDE))
                if raw is OUTSIDE:
                    return None
                out[param.name] = raw
        return out

    def points(self, num_samples: int, seed: int, shuffled: bool) -> list[dict]:
        """grid/random: every grid point × num_samples, in Tune's order (samples outer, grid
        points inner), the sampled values drawn from ``seed``; ``shuffled``: in a seeded order."""
        import numpy as np

        rng = np.random.default_rng(seed)
        options = [self._options(item) for item in self.items]
        points = []
        for _ in range(num_samples):
            for combo in itertools.product(*options):
                config = {}
                for item, option in zip(self.items, combo):
                    config.update(self._resolve(item, option, rng))
                points.append(config)
        if shuffled:
            random.Random(seed).shuffle(points)
        return points

    @staticmethod
    def _options(item: Param | Section) -> list:
        """What a grid walks at this item: its values; for a grid over branches, (branch, one
        point of its own grids) for each branch. Sampled items: one option, drawn per point."""
        if isinstance(item, Param):
            return list(item.values) if item.kind == "grid" else [None]
        if item.kind == "choice":
            return [None]  # a branch drawn per point (a grid inside one is refused by the spec)
        out = []
        for branch in item.branches:
            grids = [p for p in branch.params if p.kind == "grid"]
            out += [(branch, dict(zip((p.key for p in grids), combo)))
                    for combo in itertools.product(*(p.values for p in grids))]
        return out

    @staticmethod
    def _resolve(item: Param | Section, option: Any, rng) -> dict:
        if isinstance(item, Param):
            return {item.key: option if item.kind == "grid" else item.sample(rng)}
        if option is None:
            branch, walked = item.branches[int(rng.integers(len(item.branches)))], {}
        else:
            branch, walked = option
        config = {**branch.fixed, **walked}
        config.update({p.key: p.sample(rng) for p in branch.params if p.kind != "grid"})
        # the branch's own order (fixed values, then its primitives as written)
        return {k: config[k] for k in [*branch.fixed, *(p.key for p in branch.params)] if k in config}


class Variants(Searcher):
    """grid/random over a conditional space: the precomputed points, one per trial (Tune's
    num_samples is their count: ``space.num_samples``)."""

    def __init__(self, points: list[dict], metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self._points = points
        self._next = 0

    def suggest(self, trial_id: str) -> dict | str:
        if self._next >= len(self._points):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._points[self._next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the points do not depend on results

    def save(self, checkpoint_path: str) -> None:  # a resumed sweep continues with the next point
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class Canonical(Searcher):
    """A TPE searcher whose proposals (named by branch) reach Tune as the trial's config."""

    def __init__(self, searcher: Searcher, plan: Plan):
        self.searcher, self.plan = searcher, plan
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def suggest(self, trial_id: str):
        proposed = self.searcher.suggest(trial_id)
        if proposed is None or proposed == Searcher.FINISHED:
            return proposed
        return self.plan.canonical(proposed)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def on_pause(self, trial_id: str) -> None:
        self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.searcher.on_unpause(trial_id)

    # Tune's SearchGenerator saves a wrapper's get_state() and the innermost searcher's own file:
    # the translation holds no state (the plan is the spec's), the inner searcher all of it.
    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class OptunaSpace:
    """Optuna's define-by-run space: each section's branch (its index), then that branch's
    parameters only. A class, not a closure: OptunaSearch pickles it with its state."""

    def __init__(self, plan: Plan):
        def distributions(params):
            return tuple((p.name, OptunaSearch.convert_search_space({p.name: p.domain})[p.name]) for p in params)

        self.items = [(item.path, tuple(distributions(b.params) for b in item.branches)) if isinstance(item, Section)
                      else (None, (distributions([item]),)) for item in plan.items]

    def distributions(self) -> dict:
        """Every name this space may suggest, with its distribution (a section: of its branch indices)."""
        import optuna.distributions as od

        out = {}
        for section, branches in self.items:
            if section:
                out[section] = od.CategoricalDistribution(list(range(len(branches))))
            for branch in branches:
                out.update(dict(branch))
        return out

    def __call__(self, trial) -> None:
        for section, branches in self.items:
            chosen = branches[trial.suggest_categorical(section, list(range(len(branches))))] if section else branches[0]
            for name, distribution in chosen:
                _suggest(trial, name, distribution)


def _suggest(trial, name: str, distribution) -> None:
    import optuna.distributions as od

    if isinstance(distribution, od.CategoricalDistribution):
        trial.suggest_categorical(name, list(distribution.choices))
    elif isinstance(distribution, od.IntDistribution):
        trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    else:
        trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def hyperopt_space(plan: Plan) -> dict:
    """Each section a ``hp.choice`` over its branches, each branch a dict of its own parameters
    and its index (under the section's path)."""
    from hyperopt import hp

    def expressions(params) -> dict:
        return HyperOptSearch.convert_search_space({p.name: p.domain for p in params}) if params else {}

    out = {}
    for item in plan.items:
        if isinstance(item, Section):
            out[item.path] = hp.choice(item.path, [{item.path: i, **expressions(b.params)}
                                                   for i, b in enumerate(item.branches)])
        else:
            out.update(expressions([item]))
    return out


def searcher(spec: SweepSpec, evaluated: Sequence[Evaluated] = ()) -> Searcher:
    """The seeded searcher of a conditional or warm-started space (the caller adds a
    ConcurrencyLimiter). ``evaluated``: a warm start's earlier trials (service/core/warm_start.py)."""
    plan, metric, mode = Plan(spec), spec.objective.metric, spec.objective.mode
    objectives = getattr(spec, "objectives", None)
    if objectives:  # several: the searcher gets them all, as space.searcher does
        metric, mode = [o.metric for o in objectives], [o.mode for o in objectives]
    algorithm = spec.search.algorithm
    if algorithm in ("grid", "random"):
        return Variants(warm_grid(spec, evaluated)[0], metric, mode)
    told = [(params, e.values) for e in evaluated if (params := plan.searcher_params(e.config)) is not None]
    if algorithm == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        inner = WarmOptunaSearch(told, space=OptunaSpace(plan), metric=metric, mode=mode,
                                 sampler=optuna.samplers.TPESampler(seed=spec.seed))
    else:
        inner = WarmHyperOptSearch(told, space=hyperopt_space(plan), metric=metric, mode=mode,
                                   random_state_seed=spec.seed)
    return Canonical(inner, plan)


def warm_grid(spec: SweepSpec, evaluated: Sequence[Evaluated] = ()) -> tuple[list[dict], list[Evaluated]]:
    """grid/random: the planned points (every grid point × num_samples, see ``Plan.points``) that
    no earlier trial evaluated, and the earlier trials that evaluated the others: one per point (a
    grid repeated num_samples times takes as many earlier trials of a point as it plans)."""
    shuffled = spec.search.algorithm == "grid" and _space.early_stopping(spec)
    points = Plan(spec).points(spec.search.num_samples, spec.seed, shuffled)
    available: dict[str, list[Evaluated]] = {}
    for e in evaluated:
        available.setdefault(config_key(e.config), []).append(e)
    remaining, copied = [], []
    for point in points:
        earlier = available.get(config_key(point))
        if earlier:
            copied.append(earlier.pop(0))
        else:
            remaining.append(point)
    return remaining, copied


def told_count(spec: SweepSpec, evaluated: Sequence[Evaluated]) -> int:
    """How many of a warm start's earlier trials a TPE searcher is told (those inside this space)."""
    plan = Plan(spec)
    return sum(plan.searcher_params(e.config) is not None for e in evaluated)


class WarmOptunaSearch(OptunaSearch):
    """OptunaSearch whose study starts with earlier results: each a COMPLETE trial with its
    parameters and objective values. (Ray's own ``evaluated_rewards`` takes one objective and no
    define-by-run space; this takes both.)"""

    def __init__(self, told: list[tuple[dict, tuple]], **kwargs):
        self._told = told
        super().__init__(**kwargs)

    def _setup_study(self, mode):
        import optuna

        super()._setup_study(mode)
        distributions = self._space.distributions()
        several = isinstance(self._metric, list)
        for params, values in self._told:
            trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, params=params,
                distributions={name: distributions[name] for name in params},
                **({"values": list(values)} if several else {"value": values[0]}))
            self._ot_study.add_trial(trial)


class WarmHyperOptSearch(HyperOptSearch):
    """HyperOptSearch whose trial history starts with earlier results: each a DONE trial document
    with its loss (hyperopt minimizes: a maximized metric's value negated)."""

    def __init__(self, told: list[tuple[dict, tuple]], **kwargs):
        self._told = told
        super().__init__(**kwargs)

    def _setup_hyperopt(self) -> None:
        import hyperopt
        from hyperopt.fmin import generate_trials_to_calculate

        super()._setup_hyperopt()
        if not self._told:
            return
        trials = generate_trials_to_calculate([params for params, _ in self._told])
        for doc, (_, values) in zip(trials._dynamic_trials, self._told):
            doc["state"] = hyperopt.JOB_STATE_DONE
            doc["result"] = {"loss": self.metric_op * values[0], "status": hyperopt.STATUS_OK}
        trials.refresh()
        self._hpopt_trials = trials


def trials_planned(spec: SweepSpec) -> int:
    """Tune's num_samples: grid/random hand out one point per trial; TPE proposes num_samples."""
    return num_trials(spec) if spec.search.algorithm in ("grid", "random") else spec.search.num_samples
