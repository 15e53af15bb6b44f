"""The report's analyses: pure functions of the typed sweep record, no I/O, no pictures.

Each takes the sweep's index (``SweepIndex``: objective, budget, best trial) and its trials' full
records (``list[TrialRecord]``, as ``SweepStore.read_trials`` returns them: config, history,
exploits) and returns plain data (dicts and lists), which is what report.json holds and what
figures.py and page.py draw:

    leaderboard_rows, comparison_budget, heatmap, parameter_importance, trial_stops,
    rung_decisions, pbt_lineage, compute_accounting, cards

The noise scale (standard errors, the indistinguishable set, the overfitting flag) is stats.py's.

Two views of a trial's score. The leaderboard ranks by the best epoch's objective
(``trial.best``, the one ranking ``service.core.record.ranked``: sweepctl and the API sort the same
way). Comparisons *between configs* (heatmap, importance, parallel coordinates) use every trial's
objective at one common epoch (``comparison_budget``): under early stopping a trial cut at epoch 2
and one trained for 8 are otherwise compared on their budgets as much as on their configs.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

import numpy as np

from service.analysis import stats
from service.core.record import SweepIndex, TrialRecord, TrialSummary
from service.analysis.tables import format_value
from service.core.spec import (
    Choice, Grid, LogUniform, QUniform, RandInt, SweepSpec, Uniform, branches, primitive_values, search_space,
)

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
IMPORTANCE_SEED = 0
# Below this many trials per parameter the forest behind fANOVA is fitted to too few points for its
# ranking to be stable (adding a trial can reorder it): the page says so.
TRIALS_PER_PARAM = 10
# A parameter with more distinct values than this (and no grid/choice in the spec) is continuous:
# it gets a scatter, not a grid heatmap whose cells would each hold one trial.
MAX_GRID_LEVELS = 8

IMPORTANCE_METHOD = (
    "fANOVA (Hutter et al., 2014) as optuna.importance.FanovaImportanceEvaluator computes it (seed 0): a "
    "random forest of 64 trees fitted from the trials' parameters to their objective at the compared epoch; "
    "a parameter's importance is the variance of its first-order marginal (the forest's prediction averaged "
    "over every other parameter) over the total variance across the parameter space, i.e. the share of the "
    "objective's variance it explains on its own (what is left is interactions). Each parameter spans the "
    "spec's own distribution (its bounds, log scale for loguniform)."
)
# What we do ourselves, because Optuna's evaluator cannot express it (the page lists these).
IMPORTANCE_OWN_CODE = [
    "log scale: optuna 5's FanovaImportanceEvaluator ignores log=True (it transforms with transform_log=False), "
    "so a loguniform parameter (and a grid of positive values evenly spaced in log, e.g. 3e-4, 1e-3, 3e-3) is "
    "handed to it as log10(value) over log10 of its bounds",
    "grids: Optuna has no grid distribution; a numeric grid becomes a range over its values, any other grid "
    "(and every choice) a categorical one",
    "values Optuna's categorical cannot hold (lists, whole models) are passed as their JSON text",
    "the objective at the compared epoch (not a study's trial value) is each trial's value",
]


class AnalysisError(Exception):
    """An analysis option the sweep cannot satisfy (an unknown parameter, an epoch no trial ran);
    report.py turns it into a ReportError for the user."""


# ============================================================================= parameters
def score(trial: TrialSummary, metric: str) -> float | None:
    """A trial's best-epoch objective, None if it never reported one."""
    return trial.best.metric(metric) if trial.best else None


def varied_params(trials: Iterable[TrialSummary]) -> list[str]:
    """Dotted paths of the searched parameters, in the order the trials' configs list them."""
    return list(dict.fromkeys(key for trial in trials for key in trial.config))


def short_names(params: list[str]) -> dict[str, str]:
    """'model.filters' → 'filters', unless two parameters share a last segment."""
    last = [p.split(".")[-1] for p in params]
    return {p: (s if last.count(s) == 1 else p) for p, s in zip(params, last)}


def resolve_param(trials: list[TrialSummary], name: str) -> str:
    """A parameter by dotted path ('model.filters') or unique last segment ('filters')."""
    params = varied_params(trials)
    if name in params:
        return name
    matches = [p for p in params if p.split(".")[-1] == name]
    if len(matches) == 1:
        return matches[0]
    raise AnalysisError(
        f"unknown parameter {name!r} for this sweep; varied parameters: {', '.join(params) or 'none'}"
    )


def spec_primitive(spec: SweepSpec | None, param: str):
    """The search primitive the spec gave ``param`` (a PBT mutation if it has no other), else None.
    A parameter of a conditional section's branches (train.optimizer.lr in the SGD and the Adam
    branch): their primitives as one, when they are of one kind (the union of their values or
    bounds); of different kinds, None (the trials' values decide, as for an unsearched one)."""
    if spec is None:
        return None
    found = search_space(spec).get(param)
    if found is None:
        found = _merged([b.space[param] for b in branches(spec) if param in b.space])
    return found or spec.scheduler.mutated().get(param)


def _merged(primitives: list):
    if not primitives or len({type(p).__name__.split("[")[0] for p in primitives}) > 1:
        return None
    first = primitives[0]
    if len(primitives) == 1:
        return first
    (field,) = type(first).model_fields
    if isinstance(first, (Grid, Choice)):
        values = {json.dumps(v, sort_keys=True): v for p in primitives for v in primitive_values(p)}
        return type(first).model_validate({field: list(values.values())})
    bounds = [primitive_values(p) for p in primitives]
    merged = [min(b[0] for b in bounds), max(b[1] for b in bounds), *bounds[0][2:]]  # quniform keeps its q
    return type(first).model_validate({field: merged})


# ============================================================================= leaderboard
def leaderboard_rows(index: SweepIndex, trials: list[TrialRecord], top: int = 5) -> tuple[list[dict], dict]:
    """The top trials with their params, best-epoch metrics with their standard errors, epochs
    run and seconds; and the indistinguishable set (stats.indistinguishable) over every scored trial.

    Each row's ``tie`` is True when the trial cannot be told apart from the best (None: no SE)."""
    metric, order = index.objective.metric, index.ranked(trials)
    ties = stats.indistinguishable(
        [{"trial_id": t.trial_id, "value": t.best.metric(metric), "se": stats.metric_se(t.best, metric)} for t in order],
        index.objective.mode)
    rows = []
    for rank, trial in enumerate(order[:top], 1):
        best = trial.best
        rows.append({
            "rank": rank,
            "trial_id": trial.trial_id,
            "params": dict(trial.config),
            **{k: best.metric(k) for k in METRICS},
            "val_acc_se": stats.metric_se(best, "val_acc"),
            # 95 % Wilson interval: unlike ±2 SE, inside [0, 1] and not zero-width at an accuracy of 1
            "val_acc_ci95": (list(stats.wilson_interval(best.val_acc, best.val_samples))
                             if best.val_samples and best.metric("val_acc") is not None else None),
            "val_loss_se": stats.metric_se(best, "val_loss"),
            "val_samples": best.val_samples,
            "tie": ties["trials"].get(trial.trial_id, {}).get("tie"),
            "cost": {k: best.metric(k) for k in COST_METRICS},  # at the best epoch
            "best_epoch": best.epoch,
            "epochs": trial.epochs,
            "seconds": trial.seconds,
            "status": trial.status,
        })
    return rows, ties


# What a trial costs, beside its scores: shown in the leaderboard (inference_ms with its caveat).
COST_METRICS = ("params", "train_seconds", "inference_ms")
INFERENCE_NOTE = (
    "inference_ms: milliseconds per image of a forward pass (eval mode, no_grad, the trial's precision) over the same "
    "256 validation images for every trial, the median of 5 timed passes after 2 warm-up ones, once per trial start. "
    "It is the machine's and its load's as much as the model's: the trials beside it shared the CPU or GPU, so "
    "compare it only between trials run on one kind of machine, and re-measure a chosen model where it will serve. "
    "train_seconds: the training phase of the epochs up to the one shown (not validation, not checkpoint writes).")


# ============================================================================= several objectives
def pareto(index: SweepIndex, trials: list[TrialRecord]) -> dict | None:
    """A multi-objective sweep's Pareto front as the record holds it (``index.pareto_front``), for
    the figure and the table: every finished, scored trial as a point (its objectives' values at
    its scored epoch, the last: what Optuna was told), whether it is on the front or infeasible,
    and the front's rows in ranking order. None for a sweep of one objective."""
    if not index.objectives:
        return None
    objectives = [o.model_dump() for o in index.objectives]
    front = list(index.pareto_front)
    by_id = {t.trial_id: t for t in trials}
    points = []
    for t in trials:
        values = [t.best.metric(o.metric) if t.best else None for o in index.objectives]
        if t.status not in ("terminated", "stopped_early") or any(v is None for v in values):
            continue
        points.append({"trial_id": t.trial_id, "values": values, "front": t.trial_id in front,
                       "infeasible": t.infeasible})
    rows = [{"trial_id": tid, "config": dict(by_id[tid].config), "epoch": by_id[tid].best.epoch,
             "status": by_id[tid].status, "values": [by_id[tid].best.metric(o.metric) for o in index.objectives]}
            for tid in front if tid in by_id and by_id[tid].best is not None]
    return {"objectives": objectives, "front": front, "rows": rows, "points": points,
            "description": (
                f"The {len(front)} finished, feasible trials that no other finished, feasible trial dominates (at least "
                f"as good in every objective, better in one), each at its last epoch, the values Optuna was told; "
                "trials with equal values do not dominate each other and are all on it."
                + (f" The figure shows the first two of the {len(objectives)} objectives: a point on the front may "
                   "look dominated there, by a trial it beats in another." if len(objectives) > 2 else "")
                + f" The best trial is the front's best by {objectives[0]['metric']} (ties: by the next objectives).")}


def infeasible_rows(trials: list[TrialRecord]) -> list[dict]:
    """The trials that break a constraint (never ranked): rejected before training, or judged
    after it on their scored epoch; with the reason the record gives."""
    return [{"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs, "reason": t.infeasible,
             "config": dict(t.config)} for t in trials if t.infeasible]


# ============================================================================= equal budget
def objective_at(trial: TrialRecord, metric: str, epoch: int | None) -> float | None:
    """The objective of ``trial`` at ``epoch`` (None: at its best epoch), None if it has none there."""
    if epoch is None:
        return score(trial, metric)
    entry = next((h for h in trial.history if h.epoch == epoch), None)
    return entry.metric(metric) if entry is not None else None


def comparison_budget(index: SweepIndex, trials: list[TrialRecord], scheduler: dict | None,
                      at_epoch: int | str | None = None) -> dict:
    """The epoch at which configs are compared, and each trial's objective there.

    ``at_epoch``: None (default) the last rung every compared trial reached (the rungs of
    ASHA/HyperBand; without rungs, the last epoch they all ran), ``"best"`` each trial's best
    epoch (the "best ever" view: budgets differ), or an epoch N. The compared trials, for the
    default, are the finished ones (terminated or stopped early): a trial that failed or is still
    running would pull the common epoch down for everyone. A trial without the epoch is left out.

    Returns ``{"mode": "rung" | "common" | "epoch" | "best", "epoch", "label", "description",
    "scores": {trial_id: value}, "left_out": {trial_id: reason}}``.
    """
    metric = index.objective.metric
    scored = index.ranked(trials)
    if at_epoch == "best":
        return {"mode": "best", "epoch": None, "label": f"best {metric}",
                "description": ("each trial's best epoch, the 'best ever' view (--at-epoch best): trials the scheduler "
                                "stopped early compete with fewer epochs, so this partly measures the scheduler"),
                "scores": {t.trial_id: score(t, metric) for t in scored}, "left_out": {}}
    if at_epoch is not None:
        epoch, mode = int(at_epoch), "epoch"
        if epoch < 1:
            raise AnalysisError(f"--at-epoch needs an epoch ≥ 1, got {epoch}")
        if not any(objective_at(t, metric, epoch) is not None for t in scored):
            raise AnalysisError(f"no trial has a {metric} at epoch {epoch} "
                                f"(the longest ran {max((t.epochs for t in scored), default=0)} epochs)")
        description = f"as asked (--at-epoch {epoch})"
    elif not scored:
        return {"mode": "common", "epoch": None, "label": metric, "description": "no trial has a score yet",
                "scores": {}, "left_out": {}}
    else:
        finished = [t for t in scored if t.status in ("terminated", "stopped_early")] or scored
        last_common = min(t.epochs for t in finished)
        rungs = [r for r in rung_milestones(scheduler, index.max_epochs) if r <= last_common]
        if rungs:
            epoch, mode = rungs[-1], "rung"
            description = (f"the last {(scheduler or {}).get('name', '')} rung that every compared trial reached, so "
                           f"every trial is judged on the same budget")
        else:
            epoch, mode = last_common, "common"
            description = "the last epoch that every compared trial ran, so every trial is judged on the same budget"
        description += " (--at-epoch N for another epoch, --at-epoch best for each trial's best epoch)"
    scores, left_out = {}, {}
    for t in scored:
        value = objective_at(t, metric, epoch)
        if value is None:
            left_out[t.trial_id] = f"{t.status} after {t.epochs} epoch{'s' if t.epochs != 1 else ''}: no epoch {epoch}"
        else:
            scores[t.trial_id] = value
    return {"mode": mode, "epoch": epoch, "label": f"{metric} at epoch {epoch}", "description": description,
            "scores": scores, "left_out": left_out}


# ============================================================================= heatmap
def param_is_continuous(spec: SweepSpec | None, trials: list[TrialSummary], param: str) -> bool:
    """A range in the spec (uniform, loguniform, quniform, randint); without one, a numeric
    parameter with more than MAX_GRID_LEVELS distinct values."""
    primitive = spec_primitive(spec, param)
    if primitive is not None:
        return isinstance(primitive, (Uniform, LogUniform, QUniform, RandInt))
    values = distinct(trials, param)
    return all(_is_number(v) for v in values) and len(values) > MAX_GRID_LEVELS


def param_is_log(spec: SweepSpec | None, trials: list[TrialSummary], param: str) -> bool:
    """Log scale: loguniform in the spec, or positive numbers evenly spaced in log (a grid
    3e-4, 1e-3, 3e-3; needs 3 values to tell)."""
    primitive = spec_primitive(spec, param)
    if isinstance(primitive, LogUniform):
        return True
    if primitive is not None and not isinstance(primitive, Grid):
        return False
    values = [float(v) for v in distinct(trials, param) if _is_number(v)]
    if len(values) < 3 or len(values) != len(distinct(trials, param)) or min(values) <= 0:
        return False
    return _spread(np.diff(np.log(values))) < _spread(np.diff(values))


def heatmap_axes(spec: SweepSpec | None, trials: list[TrialSummary], importance: dict,
                 scores: dict[str, float]) -> tuple[str, str] | None:
    """The two most important parameters (importance's order) that take two or more values among
    the compared trials; when importance could not rank them, the first two such parameters."""
    compared = [t for t in trials if t.trial_id in scores]
    usable = [p for p in varied_params(compared)
              if len(distinct([t for t in compared if p in t.config], p)) > 1]
    ranking = importance.get("params") or {}
    if any(ranking.values()):
        usable = sorted(usable, key=lambda p: -ranking.get(p, 0.0))  # stable: ties keep the config order
    # the first pair that two compared trials both have (a conditional space's branches have
    # parameters of their own), each taking two values or more among the trials that have both
    for i, x in enumerate(usable):
        for y in usable[i + 1:]:
            both = [t for t in compared if x in t.config and y in t.config]
            if len(both) >= 2 and len(distinct(both, x)) > 1 and len(distinct(both, y)) > 1:
                return x, y
    return None


def heatmap(index: SweepIndex, trials: list[TrialSummary], spec: SweepSpec | None, x_param: str, y_param: str,
            scores: dict[str, float], label: str) -> dict | None:
    """A grid heatmap (``kind: grid``) when both parameters take few values (grid or choice), a
    scatter (``kind: scatter``) when either is continuous (random, Optuna, hyperopt sweeps). None
    when fewer than two compared trials have both parameters."""
    compared = [t for t in trials if t.trial_id in scores and x_param in t.config and y_param in t.config]
    if len(compared) < 2:
        return None
    if param_is_continuous(spec, compared, x_param) or param_is_continuous(spec, compared, y_param):
        return scatter_table(index, compared, x_param, y_param, scores, label,
                             x_log=param_is_log(spec, compared, x_param), y_log=param_is_log(spec, compared, y_param))
    return heatmap_table(index, compared, x_param, y_param, scores, label)


def heatmap_table(index: SweepIndex, trials: list[TrialSummary], x_param: str, y_param: str,
                  scores: dict[str, float] | None = None, label: str | None = None) -> dict:
    """Mean objective over the trials at each (x, y) value pair: the mean over the other params.

    ``scores``: trial id → the objective compared (default: each trial's best). ``mean[i][j]`` is
    for ``y_values[i]``, ``x_values[j]``; None where no trial has a score. Only trials that have
    both parameters and a score count (the axes' values are theirs)."""
    metric = index.objective.metric
    if scores is None:
        scores = {t.trial_id: score(t, metric) for t in trials if score(t, metric) is not None}
    used = [t for t in trials if t.trial_id in scores and x_param in t.config and y_param in t.config]
    xs, ys = distinct(used, x_param), distinct(used, y_param)
    cells: dict[tuple, list[float]] = {}
    for trial in used:
        key = (hashable(trial.config[y_param]), hashable(trial.config[x_param]))
        cells.setdefault(key, []).append(scores[trial.trial_id])
    mean = [[_mean(cells.get((hashable(y), hashable(x)), [])) for x in xs] for y in ys]
    count = [[len(cells.get((hashable(y), hashable(x)), [])) for x in xs] for y in ys]
    return {"kind": "grid", "metric": metric, "label": label or f"best {metric}", "x_param": x_param,
            "y_param": y_param, "x_values": xs, "y_values": ys, "mean": mean, "count": count}


def scatter_table(index: SweepIndex, trials: list[TrialSummary], x_param: str, y_param: str,
                  scores: dict[str, float], label: str, x_log: bool = False, y_log: bool = False) -> dict:
    """Every compared trial as a point (x, y) coloured by its objective. An axis whose parameter is
    not a number (a choice of lists or of names, beside a continuous one) is drawn at its values'
    positions, 0..k-1, listed in ``x_categories``/``y_categories``."""
    shown = [t for t in trials if t.trial_id in scores and x_param in t.config and y_param in t.config]
    table = {"kind": "scatter", "metric": index.objective.metric, "label": label, "x_param": x_param,
             "y_param": y_param, "x_log": x_log, "y_log": y_log}
    position = {}
    for axis, param in (("x", x_param), ("y", y_param)):
        values = distinct(shown, param)
        if all(_is_number(v) for v in values):
            position[axis] = lambda value: value
            continue
        slots = {hashable(v): k for k, v in enumerate(values)}
        position[axis] = lambda value, slots=slots: slots[hashable(value)]
        table[f"{axis}_categories"], table[f"{axis}_log"] = values, False
    table["points"] = [{"trial_id": t.trial_id, "x": position["x"](t.config[x_param]),
                        "y": position["y"](t.config[y_param]), "value": scores[t.trial_id]} for t in shown]
    return table


# ============================================================================= importance
def parameter_importance(index: SweepIndex, trials: list[TrialSummary], seed: int = IMPORTANCE_SEED, *,
                         spec: SweepSpec | None = None, scores: dict[str, float] | None = None) -> dict:
    """Importance of each varied parameter for the objective; see IMPORTANCE_METHOD.

    ``scores``: trial id → the objective to explain (default: each trial's best). Returns
    ``{"method", "own_code", "params": {path: fraction in [0, 1]}, "scales": {path: text},
    "n_trials", "n_params", "note", "caveat"}``: ``note`` when nothing could be computed,
    ``caveat`` when there are fewer than TRIALS_PER_PARAM trials per parameter."""
    metric = index.objective.metric
    if scores is None:
        scores = {t.trial_id: score(t, metric) for t in index.ranked(trials)}
    used = [t for t in trials if t.trial_id in scores]
    # A conditional space's branch parameters (SGD's momentum) are absent from the other branches'
    # trials: the forest explains the objective by what every compared trial has (the branch's
    # name among them), as Optuna's own evaluator does; the others are listed, not ranked.
    params = [p for p in varied_params(used) if all(p in t.config for t in used)]
    absent = {p: sum(p in t.config for t in used) for p in varied_params(used) if p not in params}
    result = {"method": IMPORTANCE_METHOD, "own_code": IMPORTANCE_OWN_CODE, "params": {p: 0.0 for p in params},
              "scales": {}, "n_trials": len(used), "n_params": len(params), "note": None, "caveat": None,
              "absent": absent, "absent_note": (
                  "not ranked, set in only some of the compared trials (their branch's own parameters): " + ", ".join(
                      f"{p} ({n} of {len(used)})" for p, n in absent.items())) if absent else None}
    if not params:
        result["note"] = "no parameter was varied"
        return result
    y = np.array([scores[t.trial_id] for t in used], dtype=float)
    if len(used) < 3 or np.ptp(y) == 0:
        result["note"] = "needs at least 3 compared trials with different objective values"
        return result
    if len(used) < TRIALS_PER_PARAM * len(params):
        result["caveat"] = (f"{len(used)} trials for {len(params)} parameters, fewer than {TRIALS_PER_PARAM} per "
                            f"parameter: the forest is fitted to few points and the ranking may change with more trials")

    columns = {p: optuna_column(spec, used, p) for p in params}
    result["scales"] = {p: scale for p, (_, _, scale) in columns.items()}
    importances = fanova(columns, y, seed)
    for p, value in importances.items():
        result["params"][p] = min(1.0, max(0.0, float(value)))
    if not any(result["params"].values()):
        result["note"] = "the surrogate model is flat: no parameter explains the objective"
    return result


def fanova(columns: dict[str, tuple], values: np.ndarray, seed: int = IMPORTANCE_SEED) -> dict[str, float]:
    """optuna's FanovaImportanceEvaluator on a study holding these trials: ``columns`` is param →
    (distribution, values, scale) as ``optuna_column`` builds them."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study()
    finally:
        optuna.logging.set_verbosity(verbosity)
    distributions = {p: dist for p, (dist, _, _) in columns.items()}
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={p: column[i] for p, (_, column, _) in columns.items()}, distributions=distributions,
            value=float(value)))
    # evaluate(), not get_param_importances(): the raw first-order fractions of the variance, not
    # renormalized to sum to 1 (what is left is the parameters' interactions).
    try:
        return optuna.importance.FanovaImportanceEvaluator(seed=seed).evaluate(study)
    except RuntimeError:  # "zero total variance in all trees"
        return {}


def optuna_column(spec: SweepSpec | None, trials: list[TrialSummary], param: str) -> tuple:
    """(optuna distribution, the trials' values as it takes them, the scale in words) for one
    parameter, from the spec's own primitive where there is one (see IMPORTANCE_OWN_CODE)."""
    import optuna.distributions as od

    values = [t.config[param] for t in trials]
    primitive = spec_primitive(spec, param)
    numeric = all(_is_number(v) for v in values)
    if isinstance(primitive, Choice) or not numeric:
        encoded = [json.dumps(v, sort_keys=True) for v in values]
        levels = sorted(set(encoded) | ({json.dumps(v, sort_keys=True) for v in primitive.choice}
                                        if isinstance(primitive, Choice) else set()))
        return od.CategoricalDistribution(levels), encoded, f"categorical ({len(levels)} values)"
    lo, hi = min(values), max(values)
    kind = "grid" if primitive is None else next(iter(type(primitive).model_fields))  # "loguniform", ...
    if isinstance(primitive, (Uniform, LogUniform, QUniform, RandInt)):
        bounds = list(primitive_values(primitive))[:2]
        if isinstance(primitive, RandInt):
            bounds[1] -= 1  # Tune's randint excludes its upper bound
        lo, hi = min(lo, bounds[0]), max(hi, bounds[1])  # a PBT perturbation may leave the bounds
    elif isinstance(primitive, Grid):
        lo, hi = min(lo, *primitive.grid), max(hi, *primitive.grid)
    if param_is_log(spec, trials, param) and lo > 0:
        return (od.FloatDistribution(math.log10(lo), math.log10(hi)), [math.log10(v) for v in values],
                f"log10 over [{lo:.4g}, {hi:.4g}] ({kind})")
    if all(isinstance(v, int) for v in values) and float(lo).is_integer() and float(hi).is_integer():
        return od.IntDistribution(int(lo), int(hi)), [int(v) for v in values], f"integer [{lo:g}, {hi:g}] ({kind})"
    return (od.FloatDistribution(float(lo), float(hi)), [float(v) for v in values],
            f"linear [{lo:.4g}, {hi:.4g}] ({kind})")


# ============================================================================= curves
def trial_stops(trials: list[TrialRecord], decisions: dict) -> dict[str, dict]:
    """Where and why each trial stopped, for the curves: ``{"epoch", "reason", "text", "exploits"}``;
    reason ``finished`` (ran its budget), ``rung`` (cut there by ASHA/HyperBand), ``stopped``
    (stopped early elsewhere: the median rule), ``error``, ``running`` / ``paused`` / ``pending``;
    ``exploits``: the epochs at which PBT replaced its weights (``{"epoch", "donor"}``)."""
    cut = {t["trial_id"]: t["cut_at_rung"] for t in decisions.get("trials", [])}
    out = {}
    for t in trials:
        if t.status == "terminated":
            reason, text = "finished", f"finished after epoch {t.epochs}"
        elif t.status == "stopped_early" and cut.get(t.trial_id) is not None:
            reason, text = "rung", f"cut at rung {cut[t.trial_id]}"
        elif t.status == "stopped_early":
            reason, text = "stopped", f"stopped early after epoch {t.epochs}"
        elif t.status == "error":
            reason, text = "error", f"failed after epoch {t.epochs}" + (f" ({t.error.type})" if t.error else "")
        else:
            reason, text = t.status, f"{t.status} at epoch {t.epochs}"
        out[t.trial_id] = {"epoch": t.epochs, "reason": reason, "text": text,
                           "exploits": [{"epoch": e.epoch, "donor": e.donor} for e in t.exploits]}
    return out


def config_labels(trials: list[TrialSummary], names: dict[str, str]) -> dict[str, str]:
    """Each trial's label for a shared plot: the config values that differ among ``trials``
    (all of them when none differ), 'filters=32, lr=0.003'."""
    params = varied_params(trials)
    differing = [p for p in params if len({hashable(t.config.get(p)) for t in trials}) > 1] or params
    return {t.trial_id: ", ".join(f"{names.get(p, p)}={_short(t.config[p])}"
                                  for p in differing if p in t.config) for t in trials}


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)


# ============================================================================= early stopping
def rung_milestones(scheduler: dict | None, max_epochs: int) -> list[int]:
    """Epochs at which the early-stopping scheduler compares trials (and may cut one), as Ray
    Tune 2.60 computes them; only the epochs below ``max_epochs`` (reaching it is completion).

    ``scheduler``: the spec's scheduler section as JSON. ASHA: grace_period × rf^k for each
    bracket s (offset by s); HyperBand: each bracket s starts at int(max_t × rf^-s) and
    multiplies by rf. A trial is judged at the first epoch ≥ the rung.
    """
    if not scheduler:
        return []
    name, rf = scheduler.get("name"), float(scheduler.get("reduction_factor", 3))
    milestones: set[int] = set()
    if name == "asha":
        min_t = scheduler.get("grace_period", 1)
        for s in range(scheduler.get("brackets", 1)):
            num_rungs = int(np.log(max_epochs / min_t) / np.log(rf) - s + 1)
            milestones |= {math.ceil(min_t * rf ** (k + s)) for k in range(num_rungs)}
    elif name == "hyperband":
        for s in range(int(np.round(np.log(max_epochs) / np.log(rf))) + 1):
            r = int(max_epochs * rf ** (-s))
            while 0 < r < max_epochs:
                milestones.add(r)
                r = int(min(r * rf, max_epochs))
    return sorted(m for m in milestones if 0 < m < max_epochs)


def rung_decisions(index: SweepIndex, trials: list[TrialRecord], scheduler: dict | None) -> dict:
    """What the early-stopping scheduler decided, derived from the epochs each trial ran.

    A trial stopped early whose last epoch is a rung was cut at that rung. Per rung: how many
    trials reached it, how many were cut there, how many went on, and every trial's objective
    at that epoch (the values the scheduler compared).
    """
    metric, max_epochs = index.objective.metric, index.max_epochs
    rungs = rung_milestones(scheduler, max_epochs)
    rows = []
    for t in trials:
        cut = t.epochs if t.status == "stopped_early" and t.epochs in rungs else None
        rows.append({"trial_id": t.trial_id, "epochs": t.epochs, "status": t.status,
                     "cut_at_rung": cut, "score": score(t, metric)})
    per_rung = []
    for m in rungs:
        values = {}
        for t in trials:
            at = next((h for h in t.history if h.epoch == m), None)
            if at is not None and at.metric(metric) is not None:
                values[t.trial_id] = at.metric(metric)
        per_rung.append({
            "epoch": m,
            "reached": sum(r["epochs"] >= m for r in rows),
            "cut": sum(r["cut_at_rung"] == m for r in rows),
            "continued": sum(r["epochs"] > m for r in rows),
            "values": values,
        })
    return {"scheduler": (scheduler or {}).get("name", "unknown"), "max_epochs": max_epochs,
            "rungs": per_rung, "trials": rows}


# ============================================================================= PBT
def pbt_lineage(index: SweepIndex, trials: list[TrialRecord]) -> dict | None:
    """PBT exploit edges (trial copied donor's weights and config at epoch), and the chain of
    trials the best trial's final weights descend from. None when the sweep has no exploits."""
    edges = [{"trial_id": t.trial_id, "epoch": e.epoch, "donor": e.donor, "config": dict(e.config)}
             for t in trials for e in t.exploits]
    if not edges:
        return None
    best = index.best_trial
    return {"edges": edges, "best_trial": best, "best_ancestry": ancestry(trials, best) if best else []}


def ancestry(trials: list[TrialRecord], trial_id: str) -> list[dict]:
    """Segments ``{"trial_id", "from_epoch", "to_epoch"}`` (epochs trained, exclusive start),
    newest first: the trial trained after its last exploit; before that, its donor did; etc."""
    epochs = {t.trial_id: t.epochs for t in trials}
    exploits = {t.trial_id: sorted(t.exploits, key=lambda e: e.epoch) for t in trials}
    segments, current, end = [], trial_id, epochs.get(trial_id, 0)
    for _ in range(sum(len(v) for v in exploits.values()) + 1):  # each exploit is followed at most once
        earlier = [e for e in exploits.get(current, []) if e.epoch < end or (not segments and e.epoch <= end)]
        start = earlier[-1].epoch if earlier else 0
        segments.append({"trial_id": current, "from_epoch": start, "to_epoch": end})
        if not earlier:
            break
        current, end = earlier[-1].donor, start
    return segments


# ============================================================================= compute
def compute_accounting(index: SweepIndex, trials: list[TrialRecord]) -> dict:
    """Where the compute went, by phase, and what early stopping saved.

    The full budget is every trial of the sweep run for max_epochs; epochs saved = full budget −
    epochs run. A trial's seconds (Tune's time_total_s) split into: training (the loop's
    epoch_seconds: train + validation), checkpoint writes (checkpoint_seconds), and the rest, its
    start (the trainable's imports, data load, model build) and reporting. The first trial a fresh
    worker process runs also pays that worker's start-up (importing torch, loading the dataset
    once; later trials reuse the process): we count as worker start-up the part of a trial's start
    beyond the sweep's median trial start. Cluster start-up is what the record sees of Ray's: from
    the record's start (after ray.init) to the first trial's start (timestamps to the second); the
    time ray.init itself takes is before the record exists and is in no number here.
    """
    epochs_run = sum(t.epochs for t in trials)
    full_budget = index.max_epochs * len(trials)
    rows = []
    for t in trials:
        training = float(sum(h.epoch_seconds or 0.0 for h in t.history))
        checkpoints = float(sum(h.checkpoint_seconds or 0.0 for h in t.history))
        rows.append({"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs, "seconds": float(t.seconds),
                     "training": training, "checkpoints": checkpoints,
                     "start": max(0.0, float(t.seconds) - training - checkpoints)})
    starts = [r["start"] for r in rows if r["epochs"] > 0]
    typical = float(np.median(starts)) if starts else 0.0
    for r in rows:
        r["worker_startup"] = max(0.0, r["start"] - typical)
        r["trial_start"] = r["start"] - r["worker_startup"]
        r["comparable"] = r["seconds"] - r["worker_startup"]  # what this trial would cost on a warm worker
    trial_seconds = float(sum(r["seconds"] for r in rows))
    training = float(sum(r["training"] for r in rows))
    checkpoints = float(sum(r["checkpoints"] for r in rows))
    worker_startup = float(sum(r["worker_startup"] for r in rows))
    trial_start = float(sum(r["trial_start"] for r in rows))
    wall = float(index.wall_seconds or 0.0)
    firsts = [_epoch_seconds(t.started_at) for t in trials if t.started_at]
    record_start = _epoch_seconds(index.started_at)
    cluster = max(0.0, min(firsts) - record_start) if firsts and record_start is not None else None
    per_epoch = (training + checkpoints) / epochs_run if epochs_run else None  # warm: no start-up in it
    return {
        "trials": len(trials),
        "max_epochs": index.max_epochs,
        "epochs_run": epochs_run,
        "full_budget_epochs": full_budget,
        "epochs_saved": full_budget - epochs_run,
        "epochs_saved_fraction": (full_budget - epochs_run) / full_budget if full_budget else 0.0,
        "trial_seconds": trial_seconds,
        "wall_seconds": wall,
        "phases": {"cluster_startup": cluster, "worker_startup": worker_startup, "trial_start": trial_start,
                   "training": training, "checkpoints": checkpoints},
        "typical_trial_start": typical,
        "per_trial": rows,
        "seconds_per_epoch": per_epoch,
        # seconds the saved epochs would have cost at the sweep's mean warm rate
        "estimated_seconds_saved": (full_budget - epochs_run) * per_epoch if per_epoch else 0.0,
        "parallelism": trial_seconds / wall if wall else None,  # trials running side by side, on average
    }


def _epoch_seconds(iso: str | None) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


# ============================================================================= the headline cards
def cards(index: SweepIndex, evaluation: dict | None = None) -> list[dict]:
    """The page's headline numbers, each ``{"label", "value", "detail"}`` as shown (text with its
    unit), from the index alone, so a test can check a page's cards against its record."""
    metric, best = index.objective.metric, index.best
    out = []
    if best is not None and best.best is not None:
        value, se = best.best.metric(metric), stats.metric_se(best.best, metric)
        out.append({"label": f"best {metric}", "value": _with_se(value, se),
                    "detail": f"trial {best.trial_id}, epoch {best.best.epoch}" + (
                        f"; ± 1 SE, n = {best.best.val_samples} val images" if se is not None and metric == "val_acc" else
                        "; ± 1 SE" if se is not None else "")})
    else:
        out.append({"label": f"best {metric}", "value": "-", "detail": "no scored trial"})
    if evaluation:
        se = stats.binomial_se(evaluation["test_accuracy"], evaluation["test_size"])
        out.append({"label": "test accuracy", "value": _with_se(evaluation["test_accuracy"], se),
                    "detail": (f"± 1 SE, n = {evaluation['test_size']} test images; loss {evaluation['test_loss']:.4f} "
                               f"nats; trial {evaluation['trial_id']}")})
    states = ", ".join(f"{n} {s}" for s, n in index.trial_states.items())
    out.append({"label": "trials", "value": str(len(index.trials)), "detail": states})
    if index.objectives:
        finished = sum(t.status in ("terminated", "stopped_early") for t in index.trials)
        out.append({"label": "Pareto front", "value": f"{len(index.pareto_front)} of {finished}",
                    "detail": "finished trials no other dominates in " + ", ".join(
                        f"{o.metric} ({o.mode})" for o in index.objectives)})
    if index.constraints:
        infeasible = [t for t in index.trials if t.infeasible]
        rejected = sum(t.status == "rejected" for t in infeasible)
        out.append({"label": "infeasible", "value": str(len(infeasible)),
                    "detail": f"{rejected} rejected before training; never ranked: "
                              + ", ".join(c.text for c in index.constraints)})
    order = index.ranked()
    ties = stats.indistinguishable(
        [{"trial_id": t.trial_id, "value": t.best.metric(metric), "se": stats.metric_se(t.best, metric)} for t in order],
        index.objective.mode)
    if ties["members"] is not None:
        out.append({"label": "≈ best", "value": f"{len(ties['members'])} of {len(order)}",
                    "detail": f"trials within {stats.INDISTINGUISHABLE_Z:g} SE of the best"})
    run = sum(t.epochs for t in index.trials)
    budget = index.max_epochs * len(index.trials)
    out.append({"label": "epochs saved", "value": f"{budget - run} / {budget}",
                "detail": f"{(budget - run) / budget if budget else 0.0:.0%} of the budget (epochs)"})
    out.append({"label": "wall time", "value": f"{index.wall_seconds or 0.0:.1f} s",
                "detail": f"{sum(t.seconds for t in index.trials):.1f} trial-seconds"})
    return out


def _with_se(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} ± {se:.4f}" if se is not None else f"{value:.4f}"


# ============================================================================= helpers
def hashable(value):
    """A config value as a dict key: lists (hidden sizes) as tuples, whole models as sorted JSON."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def sort_key(value):
    """Numbers by value, everything else (strings, bools, lists) by text, numbers first."""
    if _is_number(value):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def distinct(trials: Iterable[TrialSummary], param: str) -> list:
    """The values ``param`` takes among the trials, sorted (see sort_key)."""
    seen: dict = {}
    for t in trials:
        if param in t.config:
            seen.setdefault(hashable(t.config[param]), t.config[param])
    return sorted(seen.values(), key=sort_key)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _spread(gaps) -> float:
    """How uneven a sequence of gaps is: their coefficient of variation."""
    gaps = np.asarray(gaps, dtype=float)
    return float(np.std(gaps) / np.mean(gaps)) if gaps.size and np.mean(gaps) > 0 else math.inf
