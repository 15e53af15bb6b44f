"""The report's figures: matplotlib's object API on the Agg canvas (no pyplot, no display, no global
state, safe from any thread), each returned as PNG bytes.

Sweep figures draw what analyses.py computed (and the typed trial records for the curves);
test-set figures draw what trainer/evaluate.py computed. matplotlib is imported inside the
functions, so importing this module (page.py takes ``format_param`` from it) stays cheap.
"""

from __future__ import annotations

import io
import math

import numpy as np

from service.analysis.analyses import TRIALS_PER_PARAM, hashable, score, sort_key, varied_params
from service.analysis.tables import format_value
from service.core.record import SweepIndex, TrialRecord

DPI = 100  # PNG resolution: sharp on screen, small enough to embed a dozen in one page

# What "no rungs" means for each scheduler without fixed milestones.
NO_RUNGS = {
    "fifo": "every trial runs until it completes (or fails)",
    "median": "the median stopping rule may stop a trial at any epoch after grace_period",
    "pbt": "PBT stops no trial; weak ones copy a stronger one's weights (see the lineage)",
}

STATUS_COLORS = {"terminated": "#2a9d8f", "stopped_early": "#f4a261", "error": "#e63946",
                 "running": "#457b9d", "pending": "#adb5bd"}


def format_param(value) -> str:
    """A parameter value as written in a spec: 0.25, 0.001, 32, [64, 32] (4 significant digits for
    every float, where format_value gives mid-range floats 4 decimals: 0.2500); else format_value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _cmap(mode: str):
    import matplotlib

    # better is always the bright end of the colour scale, whether the objective is maximized or not
    return matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"]


def _params_text(config: dict, names: dict[str, str]) -> str:
    return ", ".join(f"{names.get(k, k)}={format_param(v)}" for k, v in config.items())


# ============================================================================= the sweep
def fig_leaderboard(rows: list[dict], names: dict[str, str], metric: str = "val_acc") -> bytes:
    """Top-k trials at their best epoch: val accuracy and loss with their noise (thick: ±1 SE, thin:
    the 95 % Wilson interval of the accuracy, ±2 SE of the loss), train values as open circles
    (no error bar: see stats.metric_se). '≈' marks the trials indistinguishable from the best."""
    fig = _figure(11, 1.2 + 0.55 * max(len(rows), 1))
    ax_acc, ax_loss = fig.subplots(1, 2, sharey=True)
    labels = [f"{'≈ ' if r.get('tie') else ''}#{r['rank']} {r['trial_id']}\n{_params_text(r['params'], names)}" for r in rows]
    y = np.arange(len(rows))
    for ax, kind in ((ax_acc, "acc"), (ax_loss, "loss")):
        val = np.array([np.nan if r.get(f"val_{kind}") is None else r[f"val_{kind}"] for r in rows], dtype=float)
        se = np.array([np.nan if r.get(f"val_{kind}_se") is None else r[f"val_{kind}_se"] for r in rows], dtype=float)
        if kind == "acc":
            wide = [(v - r["val_acc_ci95"][0], r["val_acc_ci95"][1] - v) if r.get("val_acc_ci95") else (np.nan, np.nan)
                    for v, r in zip(val, rows)]
            wide = np.array(wide, dtype=float).T if rows else np.zeros((2, 0))
        else:
            wide = np.vstack([2 * se, 2 * se]) if rows else np.zeros((2, 0))
        ax.errorbar(val, y, xerr=wide, fmt="none", ecolor="#1d3557", elinewidth=0.8, capsize=3)
        ax.errorbar(val, y, xerr=se, fmt="o", color="#1d3557", elinewidth=3, ms=5, label=f"val_{kind} ± SE")
        ax.plot([r.get(f"train_{kind}") for r in rows], y, "o", mfc="none", color="#e76f51", ms=5,
                label=f"train_{kind}")
        for yi, v, s in zip(y, val, se):
            if np.isfinite(v):
                ax.annotate(f"{v:.4f}" + (f" ± {s:.4f}" if np.isfinite(s) else ""), (v, yi), xytext=(0, 7),
                            textcoords="offset points", ha="center", fontsize=7)
        if rows and np.isfinite(val[0]):
            ax.axvline(val[0], color="#888", lw=0.8, ls=":")
        unit = "fraction of the val images" if kind == "acc" else "mean cross-entropy, nats"
        ax.set_xlabel(f"{kind} at the best epoch ({unit})")
        ax.legend(loc="lower right", fontsize=7)
        ax.margins(x=0.2, y=0.15)
    ax_acc.set_yticks(y, labels, fontsize=8)
    ax_acc.invert_yaxis()
    fig.suptitle(f"Top {len(rows)} trials by {metric}: thick bar ±1 SE, thin bar 95 % interval; ≈ : indistinguishable "
                 f"from the best", fontsize=10)
    return _png(fig)


# Where each trial's curve ends, by why it stopped (analyses.trial_stops).
STOP_MARKERS = {"finished": ("o", "finished (its whole budget)"), "rung": ("X", "cut at a rung"),
                "stopped": ("s", "stopped early"), "error": ("x", "failed"), "running": (">", "still running"),
                "paused": ("P", "paused"), "pending": (".", "pending")}


def _curve(trial: TrialRecord, key: str) -> tuple[list[int], list[float]]:
    points = [(h.epoch, h.metric(key)) for h in sorted(trial.history, key=lambda h: h.epoch) if h.metric(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def _mark_stop(ax, trial: TrialRecord, key: str, stop: dict, color) -> None:
    """The stop marker at the curve's last point, PBT exploits as ▼ where they replaced the weights."""
    epochs, values = _curve(trial, key)
    if not epochs:
        return
    marker, _ = STOP_MARKERS.get(stop.get("reason"), ("o", ""))
    ax.plot(epochs[-1], values[-1], marker, color="#e63946" if stop.get("reason") == "error" else color, ms=9,
            mec="black", mew=0.6, zorder=5)
    for exploit in stop.get("exploits", []):
        if exploit["epoch"] in epochs:
            ax.plot(exploit["epoch"], values[epochs.index(exploit["epoch"])], "v", color=color, ms=8, mec="black",
                    mew=0.6, zorder=5)


def fig_curves(trials: list[TrialRecord], labels: dict[str, str], stops: dict[str, dict],
               overfit: dict[str, dict], ranks: dict[str, int]) -> bytes:
    """The trials' curves overlaid on shared axes: loss (left) and accuracy (right), val solid and
    train dashed, one colour per trial, labelled by the config values that differ between them;
    a marker where each stopped and why; a red ring at the minimum val loss of a flagged trial."""
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    colors = matplotlib.colormaps["tab10"]
    fig = _figure(12, 5.2 + 0.22 * len(trials))
    ax_loss, ax_acc = fig.subplots(1, 2)
    handles = []
    for i, trial in enumerate(trials):
        color = colors(i % 10)
        stop = stops.get(trial.trial_id, {})
        for ax, kind in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(*_curve(trial, f"train_{kind}"), "--", color=color, lw=1, alpha=0.7)
            ax.plot(*_curve(trial, f"val_{kind}"), "-", color=color, lw=1.8)
            _mark_stop(ax, trial, f"val_{kind}", stop, color)
        flag = overfit.get(trial.trial_id, {})
        note = ""
        if flag.get("overfitting"):
            m = flag["min_val_loss_epoch"]
            entry = next(h for h in trial.history if h.epoch == m)
            ax_loss.plot(m, entry.val_loss, "o", ms=15, mfc="none", mec="#e63946", mew=2, zorder=6)
            note = f"; OVERFITS after epoch {m}"
        rank = ranks.get(trial.trial_id)
        handles.append(Line2D([], [], color=color, lw=2, label=(f"#{rank} " if rank else "") + f"{trial.trial_id}: "
                              f"{labels.get(trial.trial_id, '')} ({stop.get('text', '')}{note})"))
    for ax, kind, unit in ((ax_loss, "loss", "mean cross-entropy, nats"), (ax_acc, "accuracy", "fraction correct")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{kind} ({unit})")
        ax.grid(alpha=0.3)
    losses = [v for t in trials for k in ("val_loss", "train_loss") for v in _curve(t, k)[1]]
    if losses and min(losses) > 0:
        from matplotlib.ticker import FuncFormatter

        ax_loss.set_yscale("log")  # losses fall by orders of magnitude: the late epochs, where trials differ, stay visible
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.2, not 2 × 10^-1
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(plain)
    ax_loss.set_title("loss (log scale): val solid, train dashed" if ax_loss.get_yscale() == "log"
                      else "loss: val solid, train dashed", fontsize=10)
    ax_acc.set_title("accuracy: val solid, train dashed", fontsize=10)
    present = {s.get("reason") for t in trials for s in [stops.get(t.trial_id, {})]}
    style = [Line2D([], [], color="black", marker=STOP_MARKERS[r][0], ls="none", label=STOP_MARKERS[r][1])
             for r in STOP_MARKERS if r in present]
    if any(stops.get(t.trial_id, {}).get("exploits") for t in trials):
        style.append(Line2D([], [], color="black", marker="v", ls="none", label="PBT exploit (weights replaced)"))
    if any(overfit.get(t.trial_id, {}).get("overfitting") for t in trials):
        style.append(Line2D([], [], color="#e63946", marker="o", mfc="none", ls="none", ms=10,
                            label="minimum val loss of an overfitting trial"))
    ax_acc.legend(handles=style, fontsize=7, loc="lower right")
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=1, frameon=False)
    return _png(fig)


def fig_learning_curves(trials: list[TrialRecord], overfit: dict[str, dict], metric: str,
                        labels: dict[str, str] | None = None, stops: dict[str, dict] | None = None) -> bytes:
    """Small multiples: one row per trial, loss and accuracy, every row on the same y-range
    (shared axes, so rows compare); dotted line: best epoch; red span: overfitting."""
    from matplotlib.ticker import MaxNLocator

    labels, stops = labels or {}, stops or {}
    n = max(len(trials), 1)
    fig = _figure(11, 2.0 * n + 0.3)
    axes = np.atleast_2d(fig.subplots(n, 2, squeeze=False, sharex=True, sharey="col"))
    for row, trial in zip(axes, trials):
        flag = overfit.get(trial.trial_id, {})
        stop = stops.get(trial.trial_id, {})
        for ax, kind in zip(row, ("loss", "acc")):
            ax.plot(*_curve(trial, f"train_{kind}"), "--o", ms=3, color="#e76f51", label=f"train_{kind}")
            ax.plot(*_curve(trial, f"val_{kind}"), "-o", ms=3, color="#264653", label=f"val_{kind}")
            _mark_stop(ax, trial, f"val_{kind}", stop, "#264653")
            if trial.best is not None:
                ax.axvline(trial.best.epoch, color="#888", lw=0.8, ls=":")
            if flag.get("overfitting"):
                ax.axvspan(flag["min_val_loss_epoch"], flag["start_epoch"] + flag["epochs"] - 1, color="#e63946", alpha=0.12)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("nats" if kind == "loss" else "fraction correct")
            ax.legend(fontsize=7)
        note = f" — OVERFITS after epoch {flag['min_val_loss_epoch']}" if flag.get("overfitting") else ""
        best = f"best {metric} at epoch {trial.best.epoch}" if trial.best else "no score"
        row[0].set_title(f"{trial.trial_id}: {labels.get(trial.trial_id, '')} ({best}; {stop.get('text', '')}){note}",
                         fontsize=8, loc="left", color="#e63946" if note else "black")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    return _png(fig)


def fig_heatmap(table: dict, names: dict[str, str], mode: str) -> bytes:
    """Mean objective per (x, y) cell; the number of trials averaged in each cell below it."""
    xs, ys = table["x_values"], table["y_values"]
    grid = np.array([[np.nan if v is None else v for v in row] for row in table["mean"]], dtype=float).reshape(len(ys), len(xs))
    fig = _figure(1.8 + 1.3 * max(len(xs), 1), 1.4 + 0.8 * max(len(ys), 1))
    ax = fig.subplots()
    finite = grid[np.isfinite(grid)]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=_cmap(mode), aspect="auto",
                      vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                dark = (grid[i, j] < middle) == (mode == "max")
                ax.text(j, i, f"{grid[i, j]:.4f}\nn={table['count'][i][j]}", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
            else:
                ax.text(j, i, "no trial", ha="center", va="center", fontsize=8, color="#888")
    ax.set_xticks(range(len(xs)), [format_param(v) for v in xs])
    ax.set_yticks(range(len(ys)), [format_param(v) for v in ys])
    ax.set_xlabel(names.get(table["x_param"], table["x_param"]))
    ax.set_ylabel(names.get(table["y_param"], table["y_param"]))
    fig.colorbar(image, ax=ax, label=f"mean {table['label']}")
    ax.set_title(f"mean {table['label']} over the other parameters (n = trials per cell)", fontsize=10)
    return _png(fig)


def fig_scatter(table: dict, names: dict[str, str], mode: str) -> bytes:
    """Continuous parameters: every compared trial at its (x, y), coloured by its objective; a
    star on the best. No interpolated surface: between a few trials it would be invented."""
    import matplotlib.colors

    points = table["points"]
    x = np.array([p["x"] for p in points], dtype=float)
    y = np.array([p["y"] for p in points], dtype=float)
    v = np.array([p["value"] for p in points], dtype=float)
    fig = _figure(7.5, 5.5)
    ax = fig.subplots()
    norm = matplotlib.colors.Normalize(v.min(), v.max()) if v.size else None
    art = ax.scatter(x, y, c=v, cmap=_cmap(mode), norm=norm, s=70, edgecolors="black", linewidths=0.5)
    if v.size:
        best = int(np.argmax(v) if mode == "max" else np.argmin(v))
        ax.plot(x[best], y[best], "*", ms=20, mfc="none", mec="#e63946", mew=1.5)
        for xi, yi, vi in zip(x, y, v):
            ax.annotate(f"{vi:.3f}", (xi, yi), xytext=(5, 4), textcoords="offset points", fontsize=7)
    if table.get("x_log"):
        ax.set_xscale("log")
    if table.get("y_log"):
        ax.set_yscale("log")
    if "x_categories" in table:  # a parameter that is not a number, at its values' positions
        ax.set_xticks(range(len(table["x_categories"])), [format_param(v) for v in table["x_categories"]])
    if "y_categories" in table:
        ax.set_yticks(range(len(table["y_categories"])), [format_param(v) for v in table["y_categories"]])
    ax.set_xlabel(names.get(table["x_param"], table["x_param"]) + (" (log scale)" if table.get("x_log") else ""))
    ax.set_ylabel(names.get(table["y_param"], table["y_param"]) + (" (log scale)" if table.get("y_log") else ""))
    fig.colorbar(art, ax=ax, label=table["label"])
    ax.set_title(f"{len(points)} trials: {table['label']} (star: best)", fontsize=10)
    return _png(fig)


def fig_pareto(pareto: dict) -> bytes:
    """A multi-objective sweep: every finished trial at its first two objectives' values (its last
    epoch), the Pareto front highlighted and joined in order, infeasible trials as grey crosses;
    each axis says which way is better. A metric spanning ≥ 20× (a parameter count) is on a log axis."""
    (x_obj, y_obj), points = pareto["objectives"][:2], pareto["points"]
    fig = _figure(8.5, 6)
    ax = fig.subplots()
    groups = (("dominated", lambda p: not p["front"] and not p["infeasible"], "o", "#a8dadc", 45),
              ("infeasible (breaks a constraint)", lambda p: bool(p["infeasible"]), "x", "#888888", 45),
              ("Pareto front", lambda p: p["front"], "o", "#e63946", 90))
    for label, member, marker, color, size in groups:
        chosen = [p for p in points if member(p)]
        if chosen:
            ax.scatter([p["values"][0] for p in chosen], [p["values"][1] for p in chosen], marker=marker, s=size,
                       color=color, edgecolors="black" if marker == "o" else None, linewidths=0.5, label=label,
                       zorder=3 if label == "Pareto front" else 2)
    front = sorted((p for p in points if p["front"]), key=lambda p: (p["values"][0], p["values"][1]))
    ax.plot([p["values"][0] for p in front], [p["values"][1] for p in front], "-", color="#e63946", lw=1.2, zorder=2)
    for p in front:
        ax.annotate(p["trial_id"], (p["values"][0], p["values"][1]), xytext=(5, 4), textcoords="offset points", fontsize=7)
    for obj, set_label, set_scale, i in ((x_obj, ax.set_xlabel, ax.set_xscale, 0), (y_obj, ax.set_ylabel, ax.set_yscale, 1)):
        values = [p["values"][i] for p in points if p["values"][i] is not None]
        log = bool(values) and min(values) > 0 and max(values) / min(values) >= 20
        if log:
            set_scale("log")
        better = "higher" if obj["mode"] == "max" else "lower"
        set_label(f"{obj['metric']} ({obj['mode']}: {better} is better{', log scale' if log else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    more = f" (first 2 of {len(pareto['objectives'])} objectives)" if len(pareto["objectives"]) > 2 else ""
    ax.set_title(f"Pareto front: {len(front)} of {len(points)} finished trials{more}, each at its last epoch", fontsize=10)
    return _png(fig)


def _axis(values: list) -> tuple[np.ndarray, list[float], list[str]]:
    """One parallel-coordinates axis: positions in [0, 1], tick positions and tick labels.
    Numbers spanning ≥ 20× (learning rates) get a log scale; others are categories."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        v = np.asarray(values, dtype=float)
        log = v.min() > 0 and v.max() / v.min() >= 20
        f = np.log10(v) if log else v
        lo, hi = f.min(), f.max()
        pos = (f - lo) / (hi - lo) if hi > lo else np.full(len(v), 0.5)
        distinct = sorted(set(values))  # the values themselves: ints stay ints in the labels
        if len(distinct) <= 6:
            ticks = distinct
        else:
            ticks = (10 ** np.linspace(lo, hi, 5) if log else np.linspace(lo, hi, 5)).tolist()
        tf = np.log10(np.asarray(ticks, dtype=float)) if log else np.asarray(ticks, dtype=float)
        tick_pos = ((tf - lo) / (hi - lo) if hi > lo else np.full(len(ticks), 0.5)).tolist()
        return pos, tick_pos, [format_param(t) for t in ticks]
    by_key = {hashable(v): v for v in values}  # one original value per level, for its label
    levels = sorted(by_key, key=lambda k: sort_key(by_key[k]))
    spread = (lambda i: i / (len(levels) - 1)) if len(levels) > 1 else (lambda i: 0.5)
    pos = np.array([spread(levels.index(hashable(v))) for v in values])
    return pos, [spread(i) for i in range(len(levels))], [format_param(by_key[k]) for k in levels]


def fig_parallel(index: SweepIndex, trials: list[TrialRecord], names: dict[str, str],
                 scores: dict[str, float] | None = None, label: str | None = None) -> bytes:
    """Every compared trial as a line across its parameters and the objective, coloured by it.
    ``scores``: trial id → the objective compared (analyses.comparison_budget); default: the best."""
    import matplotlib.colors

    metric, mode = index.objective.metric, index.objective.mode
    if scores is None:
        scores = {t.trial_id: score(t, metric) for t in index.ranked(trials)}
    label = label or f"best {metric}"
    compared = [t for t in trials if t.trial_id in scores]
    # the parameters every compared trial has (a conditional space's branch parameters are not)
    params = [p for p in varied_params(compared) if all(p in t.config for t in compared)]
    shown = compared
    shown.sort(key=lambda t: scores[t.trial_id], reverse=mode == "min")  # best drawn last
    values = [scores[t.trial_id] for t in shown]
    columns = [[t.config[p] for t in shown] for p in params] + [values]
    labels = [names.get(p, p) for p in params] + [label]
    fig = _figure(max(6.0, 2.0 * len(columns)), 4.5)
    ax = fig.subplots()
    axes = [_axis(c) for c in columns] if shown else []
    norm = matplotlib.colors.Normalize(min(values), max(values)) if values else None
    cmap = _cmap(mode)
    ys = np.column_stack([a[0] for a in axes]) if shown else np.zeros((0, len(columns)))
    for row, s in zip(ys, values):
        ax.plot(range(len(columns)), row, color=cmap(norm(s)), alpha=0.8, lw=1.5)
    for i, (_, tick_pos, tick_labels) in enumerate(axes):
        ax.axvline(i, color="black", lw=0.8)
        for tp, tl in zip(tick_pos, tick_labels):
            ax.text(i + 0.03, tp, tl, fontsize=7, va="center")
    ax.set_xticks(range(len(columns)), labels)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if norm is not None:
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    ax.set_title(f"{len(shown)} trials: parameters → {label}", fontsize=10)
    return _png(fig)


def fig_importance(importance: dict, names: dict[str, str]) -> bytes:
    items = sorted(importance["params"].items(), key=lambda kv: kv[1])
    fig = _figure(8, 1.2 + 0.45 * max(len(items), 3))
    ax = fig.subplots()
    ax.barh([names.get(p, p) for p, _ in items], [v for _, v in items], color="#457b9d")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("fraction of the objective's variance explained (first-order main effect)")
    title = f"Parameter importance — fANOVA (optuna.importance), {importance['n_trials']} trials"
    if importance.get("caveat"):
        title += f"\ncaveat: fewer than {TRIALS_PER_PARAM} trials per parameter, a rough ranking"
    ax.set_title(title, fontsize=10, color="#e63946" if importance.get("caveat") else "black")
    if importance.get("note"):
        ax.text(0.5, 0.5, importance["note"], transform=ax.transAxes, ha="center", color="#888")
    return _png(fig)


def fig_early_stopping(decisions: dict, metric: str) -> bytes:
    """Left: epochs each trial ran, rungs dashed, cut trials marked. Right: the objective each
    trial had at each rung, cut trials as red crosses (the values the scheduler compared)."""
    from matplotlib.patches import Patch

    trials = sorted(decisions["trials"], key=lambda t: (-t["epochs"], t["trial_id"]))
    rungs = decisions["rungs"]
    fig = _figure(12, 1.2 + 0.28 * max(len(trials), 4))
    ax, ax_rungs = fig.subplots(1, 2, width_ratios=[3, 2])
    y = np.arange(len(trials))
    ax.barh(y, [t["epochs"] for t in trials], color=[STATUS_COLORS.get(t["status"], "#999") for t in trials])
    for r in rungs:
        ax.axvline(r["epoch"], color="#333", ls="--", lw=0.8)
    for yi, t in zip(y, trials):
        if t["cut_at_rung"] is not None:
            ax.text(t["epochs"], yi, f" cut at rung {t['cut_at_rung']}", va="center", fontsize=7)
        elif t["status"] == "stopped_early":  # e.g. the median rule, which has no fixed rungs
            ax.text(t["epochs"], yi, f" stopped after epoch {t['epochs']}", va="center", fontsize=7)
    ax.axvline(decisions["max_epochs"], color="black", lw=1)
    ax.set_yticks(y, [t["trial_id"] for t in trials], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("epochs run (dashed: rungs; solid: max epochs)")
    statuses = sorted({t["status"] for t in trials})
    ax.legend(handles=[Patch(color=STATUS_COLORS.get(s, "#999"), label=s) for s in statuses], fontsize=7, loc="lower right")
    ax.set_title(f"Epochs per trial ({decisions['scheduler']} scheduler)", fontsize=10)

    if rungs:
        cut_at = {t["trial_id"]: t["cut_at_rung"] for t in decisions["trials"]}
        for r in rungs:
            for tid, v in r["values"].items():
                cut = cut_at.get(tid) == r["epoch"]
                ax_rungs.plot(r["epoch"], v, "x" if cut else "o", color="#e63946" if cut else "#1d3557", ms=6, alpha=0.8)
        ax_rungs.set_xticks([r["epoch"] for r in rungs])
        ax_rungs.set_xlabel("rung (epoch)")
        ax_rungs.set_ylabel(f"{metric} at the rung")
        ax_rungs.set_title("Rung decisions: o continued, x cut", fontsize=10)
    else:
        ax_rungs.axis("off")
        ax_rungs.text(0.5, 0.5, f"{decisions['scheduler']}: no rungs\n{NO_RUNGS.get(decisions['scheduler'], '')}",
                      ha="center", va="center", transform=ax_rungs.transAxes, wrap=True)
    return _png(fig)


def fig_pbt_lineage(trials: list[TrialRecord], lineage: dict) -> bytes:
    """Each trial a row over epochs; an arrow where it copied a donor; the best trial's ancestry bold."""
    from matplotlib.ticker import MaxNLocator

    ids = [t.trial_id for t in trials]
    row = {tid: i for i, tid in enumerate(ids)}
    fig = _figure(11, 1.2 + 0.35 * max(len(ids), 3))
    ax = fig.subplots()
    for t in trials:
        ax.plot([0, t.epochs], [row[t.trial_id]] * 2, color=STATUS_COLORS.get(t.status, "#999"), lw=2, alpha=0.5)
    for seg in lineage["best_ancestry"]:
        if seg["trial_id"] in row:
            ax.plot([seg["from_epoch"], seg["to_epoch"]], [row[seg["trial_id"]]] * 2, color="#e63946", lw=4)
    edges = [e for e in lineage["edges"] if e["donor"] in row and e["trial_id"] in row]
    for e in edges:
        # exploits in the same epoch would draw on top of each other: spread them a little
        same = [x for x in edges if x["epoch"] == e["epoch"]]
        x = e["epoch"] + 0.08 * (same.index(e) - (len(same) - 1) / 2)
        ax.plot(x, row[e["donor"]], "o", color="#1d3557", ms=4)
        ax.annotate("", xy=(x, row[e["trial_id"]]), xytext=(x, row[e["donor"]]),
                    arrowprops={"arrowstyle": "->", "color": "#1d3557", "lw": 1})
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(range(len(ids)), ids, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("epoch")
    ax.set_title("PBT exploit lineage: arrow = copied the donor's weights and config; red = best trial's ancestry", fontsize=10)
    return _png(fig)


# Phases of a trial's seconds (analyses.compute_accounting), bottom to top.
PHASES = (("training", "training (epochs: train + val)", "#1d3557"), ("checkpoints", "checkpoint writes", "#457b9d"),
          ("trial_start", "trial start + reporting", "#a8dadc"), ("worker_startup", "worker start-up (est.)", "#f4a261"))


def fig_compute(acct: dict, trials: list[TrialRecord] | None = None) -> bytes:
    """Left: epochs run vs. the full budget. Right: each trial's seconds by phase, so a trial that
    paid a worker's start-up is not read as a slow config."""
    fig = _figure(11, 3.8)
    ax_epochs, ax_seconds = fig.subplots(1, 2, width_ratios=[1, 2])
    ax_epochs.bar(["epochs"], [acct["epochs_run"]], color="#1d3557", label=f"run ({acct['epochs_run']})")
    ax_epochs.bar(["epochs"], [acct["epochs_saved"]], bottom=[acct["epochs_run"]], color="#a8dadc",
                  label=f"saved ({acct['epochs_saved']})")
    ax_epochs.axhline(acct["full_budget_epochs"], color="black", ls="--", lw=0.8)
    ax_epochs.set_title(f"full budget {acct['full_budget_epochs']} epochs = {acct['trials']} trials × {acct['max_epochs']}", fontsize=9)
    ax_epochs.set_ylabel("epochs")
    ax_epochs.legend(fontsize=8)
    rows = sorted(acct["per_trial"], key=lambda r: -r["seconds"])
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for key, label, color in PHASES:
        heights = np.array([r[key] for r in rows], dtype=float)
        ax_seconds.bar(x, heights, bottom=bottom, color=color, label=label)
        bottom += heights
    ax_seconds.set_xticks(x, [r["trial_id"] for r in rows], rotation=60, fontsize=7, ha="right")
    ax_seconds.set_ylabel("seconds")
    ax_seconds.legend(fontsize=7)
    cluster = acct["phases"]["cluster_startup"]
    ax_seconds.set_title(f"trial-seconds {acct['trial_seconds']:.1f} s in {acct['wall_seconds']:.1f} s wall time"
                         + (f"; cluster start-up {cluster:.0f} s before the first trial" if cluster is not None else ""),
                         fontsize=9)
    return _png(fig)


# ============================================================================= the test set
# The numbers come from trainer/evaluate.py.
def fig_confusion(cm: np.ndarray, class_names: list[str]) -> bytes:
    n = len(class_names)
    size = min(11.0, 1.8 + 0.42 * n)
    fig = _figure(size + 1.5, size)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    if n <= 20:  # counts and names are readable only on small matrices
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="test images")
    ax.set_title(f"Confusion matrix ({int(cm.sum())} test images)", fontsize=10)
    return _png(fig)


def fig_per_class(accuracy: np.ndarray, class_names: list[str]) -> bytes:
    order = np.argsort(accuracy, kind="stable")  # worst classes first: where to look
    fig = _figure(max(5.5, 0.35 * len(class_names) + 2), 3.5)
    ax = fig.subplots()
    ax.bar(range(len(order)), accuracy[order], color="#457b9d")
    ax.set_xticks(range(len(order)), [class_names[i] for i in order], rotation=60, ha="right",
                  fontsize=8 if len(order) <= 30 else 5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("Per-class test accuracy (worst first)", fontsize=10)
    return _png(fig)


def fig_worst_images(images: np.ndarray, worst: list[dict], class_names: list[str]) -> bytes:
    """The k worst-classified test images (lowest probability of the true class). ``images``:
    (k, C, H, W) in [0, 1]."""
    k = len(worst)
    cols = min(5, max(k, 1))
    rows = max(1, math.ceil(k / cols))
    fig = _figure(2.3 * cols, 2.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, w in zip(axes, images, worst):
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)))
        ax.set_title(f"true {class_names[w['true']]} p={w['prob_true']:.3f}\n"
                     f"pred {class_names[w['pred']]} p={w['prob_pred']:.3f}", fontsize=8,
                     color="#e63946" if w["pred"] != w["true"] else "black")  # red: misclassified
    fig.suptitle(f"{k} worst-classified test images (lowest probability of the true class)", fontsize=10)
    return _png(fig)


def fig_tsne(embedding: np.ndarray, labels: np.ndarray, wrong: np.ndarray, class_names: list[str]) -> bytes:
    import matplotlib

    n = len(class_names)
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    fig = _figure(8, 6.2)
    ax = fig.subplots()
    for c in range(n):
        mask = labels == c
        if mask.any():
            ax.scatter(embedding[mask, 0], embedding[mask, 1], s=10, color=cmap(c / max(n - 1, 1) if n > 20 else c),
                       label=class_names[c] if n <= 20 else None, alpha=0.8)
    ax.scatter(embedding[wrong, 0], embedding[wrong, 1], s=40, facecolors="none", edgecolors="black",
               linewidths=1.0, label="misclassified")
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncols=2 if n > 10 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of penultimate-layer features ({len(labels)} test images; circled: misclassified)", fontsize=10)
    return _png(fig)
