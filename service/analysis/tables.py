"""Text tables of a sweep's record: the leaderboard sweepctl prints, the one column format every
table uses (``format_column``: the leaderboard, `sweepctl trials`, the live table of `sweepctl run`)
and the one value format (``format_value``: the report and the web page show a value the same way)."""

from __future__ import annotations

import math

from service.core.record import SweepIndex


STANDARD_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def leaderboard(index: SweepIndex, top: int = 5) -> str:
    """The top trials as a text table: params, best-epoch metrics (and the objectives' own, when
    they are others), epochs run, seconds; a multi-objective sweep marks its Pareto front (*). The
    infeasible trials, never ranked, are listed below it with the constraint each one breaks."""
    ranked = index.ranked()
    params = list(ranked[0].config) if ranked else []
    objectives = index.objectives or [index.objective]
    metrics = (*STANDARD_METRICS, *(o.metric for o in objectives if o.metric not in STANDARD_METRICS))
    front = set(index.pareto_front)
    marks = ["pareto"] if index.objectives else []
    header = ["#", "trial", *marks] + [p.split(".")[-1] for p in params] + [*metrics, "epochs", "seconds", "status"]
    shown = ranked[:top]
    columns = ([[str(i) for i in range(1, len(shown) + 1)], [t.trial_id for t in shown]]
               + [["*" if t.trial_id in front else "" for t in shown] for _ in marks]
               + [format_column([t.config.get(p) for t in shown]) for p in params]
               + [format_column([t.best.metric(k) for t in shown], metric_kind(k)) for k in metrics]
               + [[f"{t.best.epoch}/{t.epochs}" for t in shown], [f"{t.seconds:.1f}" for t in shown],
                  [t.status for t in shown]])
    rows = [list(r) for r in zip(*columns)]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    if index.objectives:
        by = ", then ".join(f"{o.metric} ({o.mode})" for o in objectives)
        title = (f"Top {min(top, len(ranked))} of {len(index.trials)} trials by {by} (epoch = scored/run: the last; "
                 f"* = on the Pareto front, {len(front)} trial{'s' if len(front) != 1 else ''})")
    else:
        title = (f"Top {min(top, len(ranked))} of {len(index.trials)} trials by {index.objective.metric} "
                 f"(epoch = best/run)")
    infeasible = [t for t in index.trials if t.infeasible]
    below = ([f"Infeasible, never ranked ({len(infeasible)}):"]
             + [f"  {t.trial_id} ({t.status}): {t.infeasible}" for t in infeasible]) if infeasible else []
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows] + below)


# One number format per table column (the leaderboard, `sweepctl trials`, the live table of
# `sweepctl run`): a column's numbers share one notation and one number of decimals, so 0 and 0.25
# read 0.00 and 0.25, never 0 next to 0.2500.
SIGNIFICANT = 4  # significant digits of a metric (a loss), and at most of a parameter value
ACCURACY_DECIMALS = 4  # accuracies (0..1): fixed, 0.9757
MAX_DECIMALS = 5  # a column that needs more (0.0003497: 7) is written in scientific notation: 3.497e-04


def metric_kind(name: str) -> str:
    """How a metric's column is formatted: ``accuracy`` (val_acc, train_acc: fixed 4 decimals) or
    ``metric`` (losses and the rest: 4 significant digits)."""
    return "accuracy" if name.endswith(("acc", "accuracy")) else "metric"


def format_column(values, kind: str = "param") -> list[str]:
    """A table column's cells, numbers in one format for the whole column (see ``format_value``
    for anything else; None: ``-``).

    ``param`` (a hyperparameter): each value as written, to at most 4 significant digits, all with
    the decimals the most precise one needs (dropout 0, 0.25, 0.5: 0.00, 0.25, 0.50); ``accuracy``:
    4 decimals (0.9757); ``metric`` (losses): 4 significant digits for every value, with the
    decimals the smallest one needs (2.3026, 0.5123). A column needing more than 5 decimals
    (lr 1e-05, a train_loss of 0.0003497) is all scientific: 3.497e-04, 5.123e-01. A column of
    whole numbers only (filters, batch size) stays as it is: 32, 64."""
    numbers = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    if not any(isinstance(v, float) for v in values if _is_number(v)):
        return [format_value(v) for v in values]
    if kind == "accuracy":
        def number(x: float) -> str:
            return f"{x:.{ACCURACY_DECIMALS}f}"
    else:
        nonzero = [abs(x) for x in numbers if x != 0]
        if kind == "param":
            needs = [_decimals_as_written(x) for x in nonzero]
        else:
            needs = [SIGNIFICANT - 1 - math.floor(math.log10(x)) for x in nonzero]
        decimals = max([0, *needs])
        if decimals <= MAX_DECIMALS and max(nonzero, default=0.0) < 1e6:
            def number(x: float) -> str:
                return f"{x:.{decimals}f}"
        else:
            def number(x: float) -> str:
                return f"{x:.{SIGNIFICANT - 1}e}"
    return [number(float(v)) if _is_number(v) and math.isfinite(v) else format_value(v) for v in values]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decimals_as_written(x: float) -> int:
    """The decimals of ``x`` to 4 significant digits, trailing zeros dropped (0.25: 2, 0.003: 3);
    more than MAX_DECIMALS when that needs an exponent (1e-05)."""
    text = f"{x:.{SIGNIFICANT}g}"
    if "e" in text:
        return MAX_DECIMALS + 1 if x < 1 else 0
    return len(text.partition(".")[2])


def format_value(value) -> str:
    """A config or metric value, short: 4 significant digits, a whole model as name(k=v, ...)."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "name" in value:  # a whole model from a grid over models
        return value["name"] + "(" + ", ".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def _stop_reason(trial: dict) -> str:
    """The stop reason column: why the trial stopped, or, for a trial that ran but breaks a
    constraint, that it is infeasible and why (a rejected one's stop reason says so already)."""
    if trial.get("infeasible") and trial.get("status") != "rejected":
        return f"infeasible: {trial['infeasible']}"
    return trial.get("stop_reason") or ""


def trials_table(body: dict) -> str:
    """`sweepctl trials`: one row per trial (``body`` as GET /sweeps/{name}/trials answers)."""
    trials = body["trials"]
    params = list(dict.fromkeys(k for t in trials for k in t["config"]))
    metric = body["objective"]["metric"]
    header = ["trial", "status"] + [p.split(".")[-1] for p in params] + [
        metric, "best epoch", "epochs", "seconds", "restarts", "stop reason"]
    bests = [t.get("best") or {} for t in trials]
    columns = ([[t["trial_id"] for t in trials], [t["status"] for t in trials]]
               + [format_column([t["config"].get(p) for t in trials]) for p in params]
               + [format_column([b.get(metric) for b in bests], metric_kind(metric)),
                  [format_value(b.get("epoch")) for b in bests], [str(t["epochs"]) for t in trials],
                  [f"{t['seconds']:.1f}" for t in trials], [str(t["restarts"]) for t in trials],
                  [_stop_reason(t)[:60] for t in trials]])
    rows = [list(r) for r in zip(*columns)]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = f"{body['sweep']} ({body['status']}): {body['total']} trial(s), sorted best {metric} first"
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
