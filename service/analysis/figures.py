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

from service.analysis.analyses import hashable, score, sort_key, varied_params
from service.analysis.tables import format_value
from service.core.record import SweepIndex, TrialRecord, ranked

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
def fig_leaderboard(rows: list[dict], names: dict[str, str]) -> bytes:
    """Top-k trials: best-epoch accuracy and loss, train vs val, one row per trial."""
    fig = _figure(11, 1.0 + 0.55 * max(len(rows), 1))
    ax_acc, ax_loss = fig.subplots(1, 2, sharey=True)
    labels = [f"#{r['rank']} {r['trial_id']}\n{_params_text(r['params'], names)}" for r in rows]
    y = np.arange(len(rows))
    for ax, kind in ((ax_acc, "acc"), (ax_loss, "loss")):
        for offset, split, color in ((-0.2, "train", "#a8dadc"), (0.2, "val", "#1d3557")):
            values = [r.get(f"{split}_{kind}") or 0.0 for r in rows]
            ax.barh(y + offset, values, height=0.4, color=color, label=f"{split}_{kind}")
            for yi, v in zip(y + offset, values):
                ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
        ax.set_xlabel(f"{kind} at the best epoch")
        ax.legend(loc="lower right", fontsize=8)
        ax.margins(x=0.15)
    ax_acc.set_yticks(y, labels, fontsize=8)
    ax_acc.invert_yaxis()
    fig.suptitle(f"Top {len(rows)} trials")
    return _png(fig)


def fig_learning_curves(trials: list[TrialRecord], overfit: dict[str, dict], metric: str) -> bytes:
    """Train (dashed) vs val (solid) loss and accuracy per epoch; red span where overfitting."""
    from matplotlib.ticker import MaxNLocator

    n = max(len(trials), 1)
    fig = _figure(11, 2.0 * n + 0.3)
    axes = np.atleast_2d(fig.subplots(n, 2, squeeze=False))
    for row, trial in zip(axes, trials):
        history = sorted(trial.history, key=lambda h: h.epoch)
        epochs = [h.epoch for h in history]
        flag = overfit.get(trial.trial_id, {})
        for ax, kind in zip(row, ("loss", "acc")):
            ax.plot(epochs, [h.metric(f"train_{kind}") for h in history], "--o", ms=3, color="#e76f51", label=f"train_{kind}")
            ax.plot(epochs, [h.metric(f"val_{kind}") for h in history], "-o", ms=3, color="#264653", label=f"val_{kind}")
            ax.axvline(trial.best.epoch, color="#888", lw=0.8, ls=":")
            if flag.get("overfitting"):
                ax.axvspan(flag["start_epoch"] - 1, flag["start_epoch"] + flag["epochs"] - 1, color="#e63946", alpha=0.12)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(kind)
            ax.legend(fontsize=7)
        note = f" — OVERFITTING from epoch {flag['start_epoch']}" if flag.get("overfitting") else ""
        row[0].set_title(f"{trial.trial_id} (best {metric} at epoch {trial.best.epoch}){note}",
                         fontsize=9, loc="left", color="#e63946" if note else "black")
    return _png(fig)


def fig_heatmap(table: dict, names: dict[str, str], mode: str) -> bytes:
    """Mean objective per (x, y) cell; the number of trials averaged in each cell below it."""
    xs, ys = table["x_values"], table["y_values"]
    grid = np.array([[np.nan if v is None else v for v in row] for row in table["mean"]], dtype=float)
    fig = _figure(1.6 + 1.3 * len(xs), 1.2 + 0.8 * len(ys))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=_cmap(mode), aspect="auto")
    finite = grid[np.isfinite(grid)]
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
    fig.colorbar(image, ax=ax, label=f"mean best {table['metric']}")
    ax.set_title(f"mean {table['metric']} over the other parameters", fontsize=10)
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


def fig_parallel(index: SweepIndex, trials: list[TrialRecord], names: dict[str, str]) -> bytes:
    """Every scored trial as a line across its parameters and the objective, coloured by it."""
    import matplotlib.colors

    metric, mode = index.objective.metric, index.objective.mode
    params = varied_params(trials)
    shown = [t for t in ranked(trials, index.objective) if all(p in t.config for p in params)][::-1]  # best drawn last
    scores = [score(t, metric) for t in shown]
    columns = [[t.config[p] for t in shown] for p in params] + [scores]
    labels = [names.get(p, p) for p in params] + [f"best {metric}"]
    fig = _figure(max(6.0, 2.0 * len(columns)), 4.5)
    ax = fig.subplots()
    axes = [_axis(c) for c in columns] if shown else []
    norm = matplotlib.colors.Normalize(min(scores), max(scores)) if scores else None
    cmap = _cmap(mode)
    ys = np.column_stack([a[0] for a in axes]) if shown else np.zeros((0, len(columns)))
    for row, s in zip(ys, scores):
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

        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {metric}")
    ax.set_title(f"{len(shown)} trials: parameters → best {metric}", fontsize=10)
    return _png(fig)


def fig_importance(importance: dict, names: dict[str, str]) -> bytes:
    items = sorted(importance["params"].items(), key=lambda kv: kv[1])
    fig = _figure(8, 1.0 + 0.45 * max(len(items), 3))
    ax = fig.subplots()
    ax.barh([names.get(p, p) for p, _ in items], [v for _, v in items], color="#457b9d")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("fraction of objective variance explained (first-order main effect)")
    ax.set_title("Parameter importance — fANOVA (optuna.importance)", fontsize=10)
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


def fig_compute(acct: dict, trials: list[TrialRecord]) -> bytes:
    fig = _figure(11, 3.6)
    ax_epochs, ax_seconds = fig.subplots(1, 2, width_ratios=[1, 2])
    ax_epochs.bar(["epochs"], [acct["epochs_run"]], color="#1d3557", label=f"run ({acct['epochs_run']})")
    ax_epochs.bar(["epochs"], [acct["epochs_saved"]], bottom=[acct["epochs_run"]], color="#a8dadc",
                  label=f"saved ({acct['epochs_saved']})")
    ax_epochs.axhline(acct["full_budget_epochs"], color="black", ls="--", lw=0.8)
    ax_epochs.set_title(f"full budget {acct['full_budget_epochs']} = {acct['trials']} trials × {acct['max_epochs']}", fontsize=9)
    ax_epochs.legend(fontsize=8)
    by_seconds = sorted(trials, key=lambda t: -t.seconds)
    ax_seconds.bar(range(len(by_seconds)), [t.seconds for t in by_seconds],
                   color=[STATUS_COLORS.get(t.status, "#999") for t in by_seconds])
    ax_seconds.set_xticks(range(len(by_seconds)), [t.trial_id for t in by_seconds], rotation=60, fontsize=7, ha="right")
    ax_seconds.set_ylabel("seconds")
    ax_seconds.set_title(f"trial-seconds {acct['trial_seconds']:.1f} s in {acct['wall_seconds']:.1f} s wall time", fontsize=9)
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
