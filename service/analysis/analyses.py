"""The report's analyses: pure functions of the typed sweep record, no I/O, no pictures.

Each takes the sweep's index (``SweepIndex``: objective, budget, best trial) and its trials' full
records (``list[TrialRecord]``, as ``SweepStore.read_trials`` returns them: config, history,
exploits) and returns plain data (dicts and lists), which is what report.json holds and what
figures.py and page.py draw:

    leaderboard_rows, detect_overfitting, heatmap_table, parameter_importance,
    rung_decisions, pbt_lineage, compute_accounting

A trial's score is its best epoch's objective (``trial.best.metric(objective.metric)``); trials
are ordered by ``service.core.record.ranked``, the one ranking (sweepctl's leaderboard and the
API sort the same way).
"""

from __future__ import annotations

import json
import math
from typing import Iterable

import numpy as np

from service.core.record import EpochResult, SweepIndex, TrialRecord, TrialSummary, ranked
from service.core.spec import Grid, SweepSpec, search_space

IMPORTANCE_METHOD = (
    "fANOVA (Hutter et al., 2014) as optuna.importance.FanovaImportanceEvaluator computes it "
    "(seed=0): a random forest of 64 trees is fitted from the trials' parameters to their best "
    "objective; in each tree, a parameter's importance is the variance of its first-order marginal "
    "(the tree's prediction averaged over every other parameter) divided by the tree's total "
    "variance over the parameter space, and the page shows the mean over the trees. A numeric "
    "parameter spans the range of its values in the sweep; any other is categorical."
)
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


class AnalysisError(Exception):
    """An analysis option the sweep cannot satisfy (an unknown parameter); report.py turns it
    into a ReportError for the user."""


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


# ============================================================================= leaderboard
def leaderboard_rows(index: SweepIndex, trials: list[TrialRecord], top: int = 5) -> list[dict]:
    """The top trials with their params, best-epoch metrics, epochs run and seconds."""
    rows = []
    for rank, trial in enumerate(ranked(trials, index.objective)[:top], 1):
        rows.append({
            "rank": rank,
            "trial_id": trial.trial_id,
            "params": dict(trial.config),
            **{k: trial.best.metric(k) for k in METRICS},
            "best_epoch": trial.best.epoch,
            "epochs": trial.epochs,
            "seconds": trial.seconds,
            "status": trial.status,
        })
    return rows


# ============================================================================= overfitting
def detect_overfitting(history: list[EpochResult], min_epochs: int = 2) -> dict:
    """Flag a run of at least ``min_epochs`` consecutive epochs in which the val loss rose while
    the train loss fell (each compared with the epoch before): the model is memorising.

    Returns ``{"overfitting": bool, "start_epoch": int | None, "epochs": int}``: ``start_epoch``
    is the first epoch of the first such run whose val loss was above the previous epoch's (so
    the best val loss was at ``start_epoch - 1``), ``epochs`` that run's length. Strict
    comparisons: a flat val loss is not a rise.
    """
    points = sorted(
        (h for h in history if h.metric("val_loss") is not None and h.metric("train_loss") is not None),
        key=lambda h: h.epoch,
    )
    runs: list[tuple[int, int]] = []  # (first epoch, length) of every diverging run
    start, length = None, 0
    for prev, cur in zip(points, points[1:]):
        if cur.val_loss > prev.val_loss and cur.train_loss < prev.train_loss:
            start, length = (cur.epoch, 1) if length == 0 else (start, length + 1)
        else:
            if length:
                runs.append((start, length))
            start, length = None, 0
    if length:
        runs.append((start, length))
    for first, n in runs:
        if n >= min_epochs:
            return {"overfitting": True, "start_epoch": first, "epochs": n}
    return {"overfitting": False, "start_epoch": None, "epochs": 0}


# ============================================================================= heatmap
def default_heatmap_params(spec: SweepSpec | None, trials: list[TrialSummary]) -> tuple[str, str] | None:
    """The first two grid parameters that take more than one value (None when there are fewer)."""
    if spec is not None:
        grids = [p for p, prim in search_space(spec).items() if isinstance(prim, Grid) and len(prim.grid) > 1]
    else:  # no spec: any parameter with repeated values looks like a grid axis
        grids = [p for p in varied_params(trials) if 1 < len(distinct(trials, p)) < len(trials)]
    return (grids[0], grids[1]) if len(grids) >= 2 else None


def heatmap_table(index: SweepIndex, trials: list[TrialSummary], x_param: str, y_param: str) -> dict:
    """Mean objective over the trials at each (x, y) value pair: the mean over the other params.

    ``mean[i][j]`` is for ``y_values[i]``, ``x_values[j]``; None where no trial has a score.
    """
    metric = index.objective.metric
    xs, ys = distinct(trials, x_param), distinct(trials, y_param)
    cells: dict[tuple, list[float]] = {}
    for trial in trials:
        value = score(trial, metric)
        if value is None or x_param not in trial.config or y_param not in trial.config:
            continue
        key = (hashable(trial.config[y_param]), hashable(trial.config[x_param]))
        cells.setdefault(key, []).append(value)
    mean = [[_mean(cells.get((hashable(y), hashable(x)), [])) for x in xs] for y in ys]
    count = [[len(cells.get((hashable(y), hashable(x)), [])) for x in xs] for y in ys]
    return {"metric": metric, "x_param": x_param, "y_param": y_param,
            "x_values": xs, "y_values": ys, "mean": mean, "count": count}


# ============================================================================= importance
def parameter_importance(index: SweepIndex, trials: list[TrialSummary], seed: int = 0) -> dict:
    """Importance of each varied parameter for the objective; see IMPORTANCE_METHOD.

    Returns ``{"method", "params": {path: fraction in [0, 1]}, "n_trials", "note"}``.
    """
    metric = index.objective.metric
    params = varied_params(trials)
    scored = [t for t in ranked(trials, index.objective) if all(p in t.config for p in params)]
    result = {"method": IMPORTANCE_METHOD, "params": {p: 0.0 for p in params}, "n_trials": len(scored), "note": None}
    y = np.array([score(t, metric) for t in scored], dtype=float)
    if not params:
        result["note"] = "no parameter was varied"
        return result
    if len(scored) < 3 or np.ptp(y) == 0:
        result["note"] = "needs at least 3 scored trials with different objective values"
        return result

    import optuna

    columns = {p: _optuna_column([t.config[p] for t in scored]) for p in params}
    distributions = {p: dist for p, (dist, _) in columns.items()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="maximize" if index.objective.mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for i, trial in enumerate(scored):
        study.add_trial(optuna.trial.create_trial(
            params={p: values[i] for p, (_, values) in columns.items()}, distributions=distributions, value=y[i]))
    # evaluate(), not get_param_importances(): the raw first-order fractions of the variance, not
    # renormalized to sum to 1 (what is left is the parameters' interactions).
    try:
        importances = optuna.importance.FanovaImportanceEvaluator(seed=seed).evaluate(study)
    except RuntimeError:  # "zero total variance in all trees"
        importances = {}
    for p, value in importances.items():
        result["params"][p] = min(1.0, max(0.0, float(value)))
    if not any(result["params"].values()):
        result["note"] = "the surrogate model is flat: no parameter explains the objective"
    return result


def _optuna_column(values: list) -> tuple:
    """A parameter's optuna distribution and its values as optuna takes them: numbers as a range
    (int or float), anything else (strings, bools, lists, whole models) as categories."""
    import optuna

    if all(_is_number(v) for v in values):
        if all(isinstance(v, int) for v in values):
            return optuna.distributions.IntDistribution(min(values), max(values)), list(values)
        values = [float(v) for v in values]
        return optuna.distributions.FloatDistribution(min(values), max(values)), values
    encoded = [json.dumps(v, sort_keys=True) for v in values]
    return optuna.distributions.CategoricalDistribution(sorted(set(encoded))), encoded


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
def compute_accounting(index: SweepIndex, trials: list[TrialSummary]) -> dict:
    """Where the compute went. The full budget is every trial of the sweep run for max_epochs;
    epochs saved = full budget − epochs run (what early stopping, or errors, did not spend)."""
    epochs_run = sum(t.epochs for t in trials)
    full_budget = index.max_epochs * len(trials)
    trial_seconds = float(sum(t.seconds for t in trials))
    wall = float(index.wall_seconds or 0.0)
    per_epoch = trial_seconds / epochs_run if epochs_run else None
    return {
        "trials": len(trials),
        "max_epochs": index.max_epochs,
        "epochs_run": epochs_run,
        "full_budget_epochs": full_budget,
        "epochs_saved": full_budget - epochs_run,
        "epochs_saved_fraction": (full_budget - epochs_run) / full_budget if full_budget else 0.0,
        "trial_seconds": trial_seconds,
        "wall_seconds": wall,
        "seconds_per_epoch": per_epoch,
        # seconds the saved epochs would have cost at the sweep's mean rate
        "estimated_seconds_saved": (full_budget - epochs_run) * per_epoch if per_epoch else 0.0,
        "parallelism": trial_seconds / wall if wall else None,  # trials running side by side, on average
    }


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
