"""Text tables of a sweep's record: the leaderboard sweepctl prints, and the one value format
(sweepctl, the report and the web page all show a value the same way)."""

from __future__ import annotations

from service.core.record import SweepIndex


def leaderboard(index: SweepIndex, top: int = 5) -> str:
    """The top trials as a text table: params, best-epoch metrics, epochs run, seconds."""
    ranked = index.ranked()
    params = list(ranked[0].config) if ranked else []
    header = ["#", "trial"] + [p.split(".")[-1] for p in params] + [
        "val_acc", "val_loss", "train_acc", "train_loss", "epochs", "seconds", "status",
    ]
    rows = []
    for i, t in enumerate(ranked[:top], 1):
        rows.append(
            [str(i), t.trial_id]
            + [format_value(t.config.get(p)) for p in params]
            + [format_value(t.best.metric(k)) for k in ("val_acc", "val_loss", "train_acc", "train_loss")]
            + [f"{t.best.epoch}/{t.epochs}", f"{t.seconds:.1f}", t.status]
        )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    title = (f"Top {min(top, len(ranked))} of {len(index.trials)} trials by {index.objective.metric} "
             f"(epoch = best/run)")
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_value(value) -> str:
    """A config or metric value, short: 4 significant digits, a whole model as name(k=v, ...)."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "name" in value:  # a whole model from a grid over models
        return value["name"] + "(" + ", ".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def trials_table(body: dict) -> str:
    """`sweepctl trials`: one row per trial (``body`` as GET /sweeps/{name}/trials answers)."""
    trials = body["trials"]
    params = list(dict.fromkeys(k for t in trials for k in t["config"]))
    metric = body["objective"]["metric"]
    header = ["trial", "status"] + [p.split(".")[-1] for p in params] + [
        metric, "best epoch", "epochs", "seconds", "restarts", "stop reason"]
    rows = []
    for t in trials:
        best = t.get("best") or {}
        rows.append([t["trial_id"], t["status"]] + [format_value(t["config"].get(p)) for p in params] + [
            format_value(best.get(metric)), format_value(best.get("epoch")), str(t["epochs"]),
            f"{t['seconds']:.1f}", str(t["restarts"]), (t.get("stop_reason") or "")[:60]])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = f"{body['sweep']} ({body['status']}): {body['total']} trial(s), sorted best {metric} first"
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
