"""Sweep reports: the studies' hand-made analyses, computed from summary.json and drawn as one page.

    sweepctl report NAME [-o DIR]   →  DIR/report.html (PNGs embedded), DIR/*.png, DIR/report.json

The module has three layers, so tests can check the numbers without looking at pictures:

1. I/O: ``read_summary``, ``read_spec``, ``write_file``... every read and write goes through these
   (and ``service.core.storage``), so S3 storage can be plugged in without touching the rest.
2. Analyses: pure functions of the summary dict (plus the spec's scheduler section):
   ``leaderboard_rows``, ``detect_overfitting``, ``heatmap_table``, ``parameter_importance``,
   ``rung_decisions``, ``pbt_lineage``, ``compute_accounting``.
3. Figures (matplotlib's object API on the Agg canvas: no pyplot, no display, no global state)
   and ``render_html``; ``generate_report`` ties it together.

A trial's score is its best epoch's objective (``trial["best"][metric]``, as in the leaderboard).
Test-set results (``sweepctl evaluate``, trainer/evaluate.py) land in the same directory as
evaluation.json + PNGs; the report includes them when present.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from service.core import storage
from service.core.spec import Grid, SweepSpec, search_space

SUMMARY = "summary.json"
SPEC = "spec.yaml"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
EVALUATION_JSON = "evaluation.json"
DPI = 100  # PNG resolution: sharp on screen, small enough to embed a dozen in one page

IMPORTANCE_METHOD = (
    "fANOVA-style first-order importance of a random-forest surrogate: a scikit-learn "
    "RandomForestRegressor (200 trees, random_state=0) is fitted from the trials' parameters to "
    "their best objective; each parameter's main effect is the forest's prediction averaged over "
    "the other parameters' observed combinations (partial dependence), and its importance is the "
    "variance of that main effect divided by the variance of the forest's predictions over the "
    "trials. On a complete grid this is the first-order Sobol/fANOVA index of the surrogate."
)


class ReportError(Exception):
    """Something the user can fix (unknown sweep, unknown parameter); printed without a traceback."""


# ============================================================================= I/O (swappable)
def read_summary(storage_uri: str, name: str) -> dict:
    summary = storage.read_summary(storage_uri, name)
    if summary is None:
        where = storage.join(storage.sweep_uri(storage_uri, name), SUMMARY)
        raise ReportError(f"no sweep '{name}' under {storage_uri} (looked for {where}); pass --storage URI")
    return summary


def read_spec(storage_uri: str, name: str) -> SweepSpec | None:
    """The resolved spec the sweep ran with; None when it is missing (the report then skips
    what needs it: rung milestones, the default heatmap axes)."""
    try:
        text = storage.read_text(storage.join(storage.sweep_uri(storage_uri, name), SPEC))
    except FileNotFoundError:
        return None
    return SweepSpec.model_validate(yaml.safe_load(text))


def default_report_dir(storage_uri: str, name: str) -> Path:
    """Local storage: <storage>/<name>/report. S3: ./reports/<name> here, uploaded to
    <storage>/<name>/report/ when written (see publish_report)."""
    if storage.is_s3(storage_uri):
        out = Path("reports", name).resolve()
        remote = storage.join(storage.sweep_uri(storage_uri, name), "report")
        if not (out / REPORT_JSON).exists() and storage.exists(remote):
            storage.download_dir(remote, out)  # keep an earlier evaluation and the report's options
        return out
    return storage.sweep_dir(storage_uri, name) / "report"


def publish_report(storage_uri: str, name: str, out: Path) -> None:
    """S3 storage: copy the report next to the sweep, so everyone reading the bucket sees it."""
    if not storage.is_s3(storage_uri):
        return
    remote = storage.join(storage.sweep_uri(storage_uri, name), "report")
    for path in sorted(Path(out).iterdir()):
        if path.is_file():
            storage.write_bytes_atomic(storage.join(remote, path.name), path.read_bytes())


def write_file(path: Path, data: bytes | str) -> None:
    """Write-then-rename, like storage.write_text_atomic, for bytes too (PNGs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: Path) -> bytes:
    return Path(path).read_bytes()


def write_json(path: Path, data: Any) -> None:
    write_file(path, json.dumps(data, indent=2) + "\n")


def read_json_if_exists(path: Path) -> Any | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


# ============================================================================= analyses (pure)
def objective(summary: dict) -> tuple[str, str]:
    return summary["objective"]["metric"], summary["objective"]["mode"]


def score(trial: dict, metric: str) -> float | None:
    """A trial's best-epoch objective, None if it never reported one."""
    best = trial.get("best")
    return best.get(metric) if best else None


def ranked_trials(summary: dict) -> list[dict]:
    """Trials with a score, best first (stable: ties keep the summary's order, as the leaderboard)."""
    metric, mode = objective(summary)
    scored = [t for t in summary["trials"] if score(t, metric) is not None]
    scored.sort(key=lambda t: score(t, metric), reverse=mode == "max")
    return scored


def varied_params(summary: dict) -> list[str]:
    """Dotted paths of the searched parameters, in the order the trials' configs list them."""
    params: list[str] = []
    for trial in summary["trials"]:
        for key in trial.get("config", {}):
            if key not in params:
                params.append(key)
    return params


def short_names(params: list[str]) -> dict[str, str]:
    """'model.filters' → 'filters', unless two parameters share a last segment."""
    last = [p.split(".")[-1] for p in params]
    return {p: (s if last.count(s) == 1 else p) for p, s in zip(params, last)}


def leaderboard_rows(summary: dict, top: int = 5) -> list[dict]:
    """The top trials with their params, best-epoch metrics, epochs run and seconds."""
    rows = []
    for rank, trial in enumerate(ranked_trials(summary)[:top], 1):
        best = trial["best"]
        rows.append({
            "rank": rank,
            "trial_id": trial["trial_id"],
            "params": dict(trial["config"]),
            **{k: best.get(k) for k in ("val_acc", "val_loss", "train_acc", "train_loss")},
            "best_epoch": best["epoch"],
            "epochs": trial["epochs"],
            "seconds": trial["seconds"],
            "status": trial["status"],
        })
    return rows


def detect_overfitting(history: list[dict], min_epochs: int = 2) -> dict:
    """Flag a run of at least ``min_epochs`` consecutive epochs in which the val loss rose while
    the train loss fell (each compared with the epoch before): the model is memorising.

    Returns ``{"overfitting": bool, "start_epoch": int | None, "epochs": int}``: ``start_epoch``
    is the first epoch of the first such run whose val loss was above the previous epoch's (so
    the best val loss was at ``start_epoch - 1``), ``epochs`` that run's length. Strict
    comparisons: a flat val loss is not a rise.
    """
    points = sorted(
        (h for h in history if h.get("val_loss") is not None and h.get("train_loss") is not None),
        key=lambda h: h["epoch"],
    )
    runs: list[tuple[int, int]] = []  # (first epoch, length) of every diverging run
    start, length = None, 0
    for prev, cur in zip(points, points[1:]):
        if cur["val_loss"] > prev["val_loss"] and cur["train_loss"] < prev["train_loss"]:
            start, length = (cur["epoch"], 1) if length == 0 else (start, length + 1)
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


def resolve_param(summary: dict, name: str) -> str:
    """A parameter by dotted path ('model.filters') or unique last segment ('filters')."""
    params = varied_params(summary)
    if name in params:
        return name
    matches = [p for p in params if p.split(".")[-1] == name]
    if len(matches) == 1:
        return matches[0]
    raise ReportError(
        f"unknown parameter {name!r} for this sweep; varied parameters: {', '.join(params) or 'none'}"
    )


def default_heatmap_params(spec: SweepSpec | None, summary: dict) -> tuple[str, str] | None:
    """The first two grid parameters that take more than one value (None when there are fewer)."""
    if spec is not None:
        grids = [p for p, prim in search_space(spec).items() if isinstance(prim, Grid) and len(prim.grid) > 1]
    else:  # no spec: any parameter with repeated values looks like a grid axis
        grids = [p for p in varied_params(summary) if 1 < len(_distinct(summary, p)) < len(summary["trials"])]
    return (grids[0], grids[1]) if len(grids) >= 2 else None


def heatmap_table(summary: dict, x_param: str, y_param: str) -> dict:
    """Mean objective over the trials at each (x, y) value pair: the mean over the other params.

    ``mean[i][j]`` is for ``y_values[i]``, ``x_values[j]``; None where no trial has a score.
    """
    metric, _ = objective(summary)
    xs, ys = _distinct(summary, x_param), _distinct(summary, y_param)
    cells: dict[tuple, list[float]] = {}
    for trial in summary["trials"]:
        value = score(trial, metric)
        if value is None or x_param not in trial["config"] or y_param not in trial["config"]:
            continue
        key = (_hashable(trial["config"][y_param]), _hashable(trial["config"][x_param]))
        cells.setdefault(key, []).append(value)
    mean = [[_mean(cells.get((_hashable(y), _hashable(x)), [])) for x in xs] for y in ys]
    count = [[len(cells.get((_hashable(y), _hashable(x)), [])) for x in xs] for y in ys]
    return {"metric": metric, "x_param": x_param, "y_param": y_param,
            "x_values": xs, "y_values": ys, "mean": mean, "count": count}


def parameter_importance(summary: dict, n_trees: int = 200, seed: int = 0) -> dict:
    """Importance of each varied parameter for the objective; see IMPORTANCE_METHOD.

    Returns ``{"method", "params": {path: fraction in [0, 1]}, "n_trials", "note"}``.
    """
    metric, _ = objective(summary)
    params = varied_params(summary)
    trials = [t for t in ranked_trials(summary) if all(p in t["config"] for p in params)]
    result = {"method": IMPORTANCE_METHOD, "params": {p: 0.0 for p in params}, "n_trials": len(trials), "note": None}
    y = np.array([score(t, metric) for t in trials], dtype=float)
    if not params:
        result["note"] = "no parameter was varied"
        return result
    if len(trials) < 3 or np.ptp(y) == 0:
        result["note"] = "needs at least 3 scored trials with different objective values"
        return result

    from sklearn.ensemble import RandomForestRegressor

    x = np.column_stack([_encode([t["config"][p] for t in trials]) for p in params])
    forest = RandomForestRegressor(n_estimators=n_trees, random_state=seed).fit(x, y)
    total = float(np.var(forest.predict(x)))
    if total == 0:
        result["note"] = "the surrogate model is flat: no parameter explains the objective"
        return result
    for j, p in enumerate(params):
        values, weights = np.unique(x[:, j], return_counts=True)
        if len(values) > 100:  # many distinct (sampled) values: 100 quantiles stand in for them
            values, weights = np.quantile(x[:, j], np.linspace(0, 1, 100)), np.ones(100)
        main_effect = []
        for v in values:  # partial dependence: set p to v in every observed configuration
            x_v = x.copy()
            x_v[:, j] = v
            main_effect.append(forest.predict(x_v).mean())
        variance = float(np.average((np.array(main_effect) - np.average(main_effect, weights=weights)) ** 2, weights=weights))
        result["params"][p] = min(1.0, variance / total)
    return result


def rung_milestones(scheduler: dict | None, max_epochs: int) -> list[int]:
    """Epochs at which the early-stopping scheduler compares trials (and may cut one), as Ray
    Tune 2.60 computes them; only the epochs below ``max_epochs`` (reaching it is completion).

    ASHA: grace_period × rf^k for each bracket s (offset by s); HyperBand: each bracket s starts
    at int(max_t × rf^-s) and multiplies by rf. A trial is judged at the first epoch ≥ the rung.
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


def rung_decisions(summary: dict, scheduler: dict | None) -> dict:
    """What the early-stopping scheduler decided, derived from the epochs each trial ran.

    A trial stopped early whose last epoch is a rung was cut at that rung. Per rung: how many
    trials reached it, how many were cut there, how many went on, and every trial's objective
    at that epoch (the values the scheduler compared).
    """
    metric, _ = objective(summary)
    max_epochs = summary["max_epochs"]
    rungs = rung_milestones(scheduler, max_epochs)
    trials = []
    for t in summary["trials"]:
        cut = t["epochs"] if t["status"] == "stopped_early" and t["epochs"] in rungs else None
        trials.append({"trial_id": t["trial_id"], "epochs": t["epochs"], "status": t["status"],
                       "cut_at_rung": cut, "score": score(t, metric)})
    per_rung = []
    for m in rungs:
        values = {}
        for t in summary["trials"]:
            at = next((h for h in t.get("history", []) if h["epoch"] == m), None)
            if at is not None and at.get(metric) is not None:
                values[t["trial_id"]] = at[metric]
        per_rung.append({
            "epoch": m,
            "reached": sum(t["epochs"] >= m for t in trials),
            "cut": sum(t["cut_at_rung"] == m for t in trials),
            "continued": sum(t["epochs"] > m for t in trials),
            "values": values,
        })
    return {"scheduler": (scheduler or {}).get("name", "unknown"), "max_epochs": max_epochs,
            "rungs": per_rung, "trials": trials}


def pbt_lineage(summary: dict) -> dict | None:
    """PBT exploit edges (trial copied donor's weights and config at epoch), and the chain of
    trials the best trial's final weights descend from. None when the sweep has no exploits."""
    edges = [
        {"trial_id": t["trial_id"], "epoch": e["epoch"], "donor": e["donor"], "config": e.get("config", {})}
        for t in summary["trials"]
        for e in t.get("exploits") or []
    ]
    if not edges:
        return None
    best = summary.get("best_trial")
    return {"edges": edges, "best_trial": best, "best_ancestry": ancestry(summary, best) if best else []}


def ancestry(summary: dict, trial_id: str) -> list[dict]:
    """Segments ``{"trial_id", "from_epoch", "to_epoch"}`` (epochs trained, exclusive start),
    newest first: the trial trained after its last exploit; before that, its donor did; etc."""
    epochs = {t["trial_id"]: t["epochs"] for t in summary["trials"]}
    exploits = {t["trial_id"]: sorted(t.get("exploits") or [], key=lambda e: e["epoch"]) for t in summary["trials"]}
    segments, current, end = [], trial_id, epochs.get(trial_id, 0)
    for _ in range(sum(len(v) for v in exploits.values()) + 1):  # each exploit is followed at most once
        earlier = [e for e in exploits.get(current, []) if e["epoch"] < end or (not segments and e["epoch"] <= end)]
        start = earlier[-1]["epoch"] if earlier else 0
        segments.append({"trial_id": current, "from_epoch": start, "to_epoch": end})
        if not earlier:
            break
        current, end = earlier[-1]["donor"], start
    return segments


def compute_accounting(summary: dict) -> dict:
    """Where the compute went. The full budget is every trial of the sweep run for max_epochs;
    epochs saved = full budget − epochs run (what early stopping, or errors, did not spend)."""
    trials = summary["trials"]
    epochs_run = sum(t["epochs"] for t in trials)
    full_budget = summary["max_epochs"] * len(trials)
    trial_seconds = float(sum(t["seconds"] for t in trials))
    wall = float(summary.get("wall_seconds") or 0.0)
    per_epoch = trial_seconds / epochs_run if epochs_run else None
    return {
        "trials": len(trials),
        "max_epochs": summary["max_epochs"],
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


# --- small helpers for the analyses
def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _sort_key(value):
    # numbers by value, everything else (strings, bools, lists) by text, numbers first
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _distinct(summary: dict, param: str) -> list:
    seen: dict = {}
    for t in summary["trials"]:
        if param in t["config"]:
            seen.setdefault(_hashable(t["config"][param]), t["config"][param])
    return sorted(seen.values(), key=_sort_key)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _encode(values: list) -> np.ndarray:
    """A parameter column for the forest: numbers as they are (trees only care about order, so no
    log scale is needed), anything else as its rank among the distinct values."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=float)
    levels = sorted({_hashable(v) for v in values}, key=_sort_key)
    return np.array([levels.index(_hashable(v)) for v in values], dtype=float)


# ============================================================================= figures
def _figure(width: float, height: float):
    # The object API: a Figure with the Agg canvas, no pyplot state, safe to use from any thread.
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


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.3g}"
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _fmt_param(value) -> str:
    """A parameter value as written in a spec: 0.25, 0.001, 32, [64, 32]."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return _fmt(value)


def _params_text(config: dict, names: dict[str, str]) -> str:
    return ", ".join(f"{names.get(k, k)}={_fmt_param(v)}" for k, v in config.items())


# What "no rungs" means for each scheduler without fixed milestones.
NO_RUNGS = {
    "fifo": "every trial runs until it completes (or fails)",
    "median": "the median stopping rule may stop a trial at any epoch after grace_period",
    "pbt": "PBT stops no trial; weak ones copy a stronger one's weights (see the lineage)",
}

STATUS_COLORS = {"terminated": "#2a9d8f", "stopped_early": "#f4a261", "error": "#e63946",
                 "running": "#457b9d", "pending": "#adb5bd"}


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


def fig_learning_curves(trials: list[dict], overfit: dict[str, dict], metric: str) -> bytes:
    """Train (dashed) vs val (solid) loss and accuracy per epoch; red span where overfitting."""
    from matplotlib.ticker import MaxNLocator

    n = max(len(trials), 1)
    fig = _figure(11, 2.0 * n + 0.3)
    axes = np.atleast_2d(fig.subplots(n, 2, squeeze=False))
    for row, trial in zip(axes, trials):
        history = sorted(trial["history"], key=lambda h: h["epoch"])
        epochs = [h["epoch"] for h in history]
        flag = overfit.get(trial["trial_id"], {})
        for ax, kind in zip(row, ("loss", "acc")):
            ax.plot(epochs, [h.get(f"train_{kind}") for h in history], "--o", ms=3, color="#e76f51", label=f"train_{kind}")
            ax.plot(epochs, [h.get(f"val_{kind}") for h in history], "-o", ms=3, color="#264653", label=f"val_{kind}")
            ax.axvline(trial["best"]["epoch"], color="#888", lw=0.8, ls=":")
            if flag.get("overfitting"):
                ax.axvspan(flag["start_epoch"] - 1, flag["start_epoch"] + flag["epochs"] - 1, color="#e63946", alpha=0.12)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(kind)
            ax.legend(fontsize=7)
        note = f" — OVERFITTING from epoch {flag['start_epoch']}" if flag.get("overfitting") else ""
        row[0].set_title(f"{trial['trial_id']} (best {metric} at epoch {trial['best']['epoch']}){note}",
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
    ax.set_xticks(range(len(xs)), [_fmt_param(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt_param(v) for v in ys])
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
        return pos, tick_pos, [_fmt_param(t) for t in ticks]
    levels = sorted({_hashable(v) for v in values}, key=_sort_key)
    spread = (lambda i: i / (len(levels) - 1)) if len(levels) > 1 else (lambda i: 0.5)
    pos = np.array([spread(levels.index(_hashable(v))) for v in values])
    return pos, [spread(i) for i in range(len(levels))], [_fmt_param(list(lv) if isinstance(lv, tuple) else lv) for lv in levels]


def fig_parallel(summary: dict, names: dict[str, str]) -> bytes:
    """Every scored trial as a line across its parameters and the objective, coloured by it."""
    import matplotlib.colors

    metric, mode = objective(summary)
    params = varied_params(summary)
    trials = [t for t in ranked_trials(summary) if all(p in t["config"] for p in params)][::-1]  # best drawn last
    scores = [score(t, metric) for t in trials]
    columns = [[t["config"][p] for t in trials] for p in params] + [scores]
    labels = [names.get(p, p) for p in params] + [f"best {metric}"]
    fig = _figure(max(6.0, 2.0 * len(columns)), 4.5)
    ax = fig.subplots()
    axes = [_axis(c) for c in columns]
    norm = matplotlib.colors.Normalize(min(scores), max(scores)) if scores else None
    cmap = _cmap(mode)
    ys = np.column_stack([a[0] for a in axes]) if trials else np.zeros((0, len(columns)))
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
    ax.set_title(f"{len(trials)} trials: parameters → best {metric}", fontsize=10)
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
    ax.set_title("Parameter importance — random-forest surrogate, fANOVA-style", fontsize=10)
    if importance.get("note"):
        ax.text(0.5, 0.5, importance["note"], transform=ax.transAxes, ha="center", color="#888")
    return _png(fig)


def fig_early_stopping(decisions: dict, metric: str) -> bytes:
    """Left: epochs each trial ran, rungs dashed, cut trials marked. Right: the objective each
    trial had at each rung, cut trials as red crosses (the values the scheduler compared)."""
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
    from matplotlib.patches import Patch

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


def fig_pbt_lineage(summary: dict, lineage: dict) -> bytes:
    """Each trial a row over epochs; an arrow where it copied a donor; the best trial's ancestry bold."""
    trials = [t["trial_id"] for t in summary["trials"]]
    row = {tid: i for i, tid in enumerate(trials)}
    fig = _figure(11, 1.2 + 0.35 * max(len(trials), 3))
    ax = fig.subplots()
    for t in summary["trials"]:
        ax.plot([0, t["epochs"]], [row[t["trial_id"]]] * 2, color=STATUS_COLORS.get(t["status"], "#999"), lw=2, alpha=0.5)
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
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(range(len(trials)), trials, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("epoch")
    ax.set_title("PBT exploit lineage: arrow = copied the donor's weights and config; red = best trial's ancestry", fontsize=10)
    return _png(fig)


def fig_compute(acct: dict, summary: dict) -> bytes:
    fig = _figure(11, 3.6)
    ax_epochs, ax_seconds = fig.subplots(1, 2, width_ratios=[1, 2])
    ax_epochs.bar(["epochs"], [acct["epochs_run"]], color="#1d3557", label=f"run ({acct['epochs_run']})")
    ax_epochs.bar(["epochs"], [acct["epochs_saved"]], bottom=[acct["epochs_run"]], color="#a8dadc",
                  label=f"saved ({acct['epochs_saved']})")
    ax_epochs.axhline(acct["full_budget_epochs"], color="black", ls="--", lw=0.8)
    ax_epochs.set_title(f"full budget {acct['full_budget_epochs']} = {acct['trials']} trials × {acct['max_epochs']}", fontsize=9)
    ax_epochs.legend(fontsize=8)
    trials = sorted(summary["trials"], key=lambda t: -t["seconds"])
    ax_seconds.bar(range(len(trials)), [t["seconds"] for t in trials],
                   color=[STATUS_COLORS.get(t["status"], "#999") for t in trials])
    ax_seconds.set_xticks(range(len(trials)), [t["trial_id"] for t in trials], rotation=60, fontsize=7, ha="right")
    ax_seconds.set_ylabel("seconds")
    ax_seconds.set_title(f"trial-seconds {acct['trial_seconds']:.1f} s in {acct['wall_seconds']:.1f} s wall time", fontsize=9)
    return _png(fig)


# --- test-set figures (the numbers come from trainer/evaluate.py)
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


# ============================================================================= HTML
CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1360px;color:#1d3557}
h1{margin-bottom:4px} h2{border-bottom:2px solid #a8dadc;padding-bottom:4px;margin-top:36px}
.meta{color:#555} .cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#f1faee;border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:1.5em} /* figures flow side by side when they fit; the caption wraps to its image's width */
figure{display:inline-table;vertical-align:top;margin:8px 16px 8px 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{display:table-caption;caption-side:bottom;color:#555;font-size:.9em;margin-top:4px} table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f1faee}
td.l,th.l{text-align:left} .warn{color:#e63946;font-weight:bold} .note{color:#555;font-style:italic}
"""


def _figure_html(name: str, png: bytes, caption: str) -> str:
    # Embedded as a data URI (the page is self-contained) and linked to the PNG written beside it.
    data = base64.b64encode(png).decode()
    return (f'<figure><a href="{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(name)}"></a>'
            f"<figcaption>{caption} (<a href=\"{name}\">{name}</a>)</figcaption></figure>")


def _table(header: list[str], rows: Iterable[list], left: int = 0) -> str:
    """``left``: how many leading columns are text (left-aligned)."""
    def cell(tag, i, v):
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{v if isinstance(v, _Raw) else html.escape(_fmt(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Raw(str):
    """Trusted HTML for a table cell."""


def _in_sweep(path: str, sweep: str) -> str:
    """A checkpoint path from the sweep's directory on (readable, and the same on every machine)."""
    parts = Path(str(path)).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index(sweep):]) if sweep in parts else str(path)


def _test_section(ev: dict | None, sweep: str, fig) -> list[str]:
    """The checkpoint's test-set results (from `sweepctl evaluate`), or how to get them."""
    parts = ["<h2 id='evaluation'>Test set</h2>"]
    if ev:
        cn = ev["class_names"]
        parts += [
            f"<p>Trial <b>{html.escape(ev['trial_id'])}</b>, checkpoint <code>{html.escape(_in_sweep(ev['checkpoint'], sweep))}</code>: "
            f"test accuracy <b>{ev['test_accuracy']:.4f}</b>, loss <b>{ev['test_loss']:.4f}</b> on "
            f"{ev['test_size']} images the sweep never saw.</p>",
            fig("confusion_matrix.png", "Rows: true class; columns: predicted class."),
            fig("per_class_accuracy.png", "Test accuracy of each class."),
            fig("worst_images.png", f"The {len(ev['worst'])} test images with the lowest probability of their true class."),
            fig("tsne.png", f"t-SNE (scikit-learn, random_state={ev['tsne']['random_state']}) of the classifier's input "
                            f"features for {ev['tsne']['points']} test images, coloured by true class."),
            "<h3>Most-confused class pairs</h3>",
            _table(["true", "predicted as", "images", "share of the true class"],
                   [[cn[p["true"]], cn[p["pred"]], p["count"], f"{p['fraction']:.1%}"] for p in ev["most_confused"]], left=2),
            "<h3>Per-class accuracy</h3>",
            _table(["class", "accuracy", "test images"],
                   [[c, a, n] for c, a, n in zip(cn, ev["per_class_accuracy"], ev["class_counts"])], left=1),
        ]
    else:
        parts.append(f"<p class='note'>Not evaluated yet: run <code>sweepctl evaluate {html.escape(sweep)}</code> "
                     "to add test accuracy, the confusion matrix, the worst images and a t-SNE map.</p>")
    return parts


def render_html(ctx: dict, figures: dict[str, bytes]) -> str:
    """The page: headline numbers, then each analysis as figure first, table second."""
    s, names = ctx["summary"], ctx["names"]
    metric, _ = objective(s)
    acct, ev = ctx["compute"], ctx.get("evaluation")
    fig = lambda name, caption: _figure_html(name, figures[name], caption) if name in figures else ""
    best = s.get("best") or {}
    cards = [
        (f"best {metric}", _fmt((best.get("metrics") or {}).get(metric)), f"trial {best.get('trial_id', '–')}"),
        ("trials", str(len(s["trials"])), ", ".join(f"{v} {k}" for k, v in s["trial_states"].items())),
        ("epochs saved", f"{acct['epochs_saved']} / {acct['full_budget_epochs']}", f"{acct['epochs_saved_fraction']:.0%} of the budget"),
        ("wall time", f"{acct['wall_seconds']:.1f} s", f"{acct['trial_seconds']:.1f} trial-seconds"),
    ]
    if ev:
        cards.insert(1, ("test accuracy", f"{ev['test_accuracy']:.4f}", f"loss {ev['test_loss']:.4f}, trial {ev['trial_id']}"))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report: {html.escape(s['sweep'])}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Sweep report: {html.escape(s['sweep'])}</h1>",
        f"<p class='meta'>objective {metric} ({s['objective']['mode']}) · status {html.escape(s['status'])} · "
        f"started {html.escape(str(s.get('started_at')))} · report generated {ctx['generated_at']}</p>",
        "<div class='cards'>" + "".join(
            f"<div class='card'>{html.escape(t)}<b>{html.escape(v)}</b><small>{html.escape(sub)}</small></div>"
            for t, v, sub in cards) + "</div>",
    ]

    # leaderboard
    params = varied_params(s)
    overfit = ctx["overfitting"]
    rows = []
    for r in ctx["leaderboard"]:
        flag = overfit.get(r["trial_id"], {})
        rows.append([r["rank"], r["trial_id"], *[_fmt_param(r["params"].get(p)) for p in params],
                     r["val_acc"], r["val_loss"], r["train_acc"], r["train_loss"],
                     f"{r['best_epoch']}/{r['epochs']}", f"{r['seconds']:.1f}", r["status"],
                     _Raw(f"<span class='warn'>from epoch {flag['start_epoch']}</span>") if flag.get("overfitting") else "no"])
    parts += [
        f"<h2 id='leaderboard'>Top {len(ctx['leaderboard'])} trials</h2>",
        fig("leaderboard.png", f"Best-epoch accuracy and loss of the top trials by {metric}."),
        _table(["#", "trial", *[names[p] for p in params], "val_acc", "val_loss", "train_acc", "train_loss",
                "epoch (best/run)", "seconds", "status", "overfitting"], rows, left=2),
    ]

    # the headline result next: how the chosen model does on images no trial ever saw
    parts += _test_section(ev, s["sweep"], fig)

    # learning curves
    flagged = [(tid, f) for tid, f in overfit.items() if f["overfitting"]]
    parts += [
        "<h2 id='curves'>Learning curves</h2>",
        fig("learning_curves.png",
            f"Train (dashed) vs val (solid) per epoch for the top trials; dotted line: best epoch; red span: "
            f"val loss rising while train loss falls for ≥ {ctx['overfit_epochs']} epochs."),
        f"<p>Overfitting (val loss up, train loss down for ≥ {ctx['overfit_epochs']} consecutive epochs): "
        + (", ".join(f"<span class='warn'>{html.escape(t)} from epoch {f['start_epoch']}</span>" for t, f in flagged)
           if flagged else "no trial") + f" of {len(overfit)}.</p>",
    ]

    # heatmap
    parts.append("<h2 id='heatmap'>Heatmap</h2>")
    hm = ctx["heatmap"]
    if hm:
        xs, ys = hm["x_values"], hm["y_values"]
        parts += [
            fig("heatmap.png", f"Mean best {metric} of the trials at each ({names.get(hm['x_param'])}, "
                               f"{names.get(hm['y_param'])}) pair, averaged over the other parameters."),
            _table([f"{names.get(hm['y_param'])} \\ {names.get(hm['x_param'])}", *[_fmt_param(x) for x in xs]],
                   [[_fmt_param(y), *hm["mean"][i]] for i, y in enumerate(ys)], left=1),
        ]
    else:
        parts.append(f"<p class='note'>{html.escape(ctx['heatmap_note'])}</p>")

    # parallel coordinates + importance
    imp = ctx["importance"]
    parts += [
        "<h2 id='parameters'>Parameters</h2>",
        fig("parallel_coordinates.png", f"Every scored trial across its parameters, coloured by best {metric}."),
        fig("importance.png", "Parameter importance."),
        f"<p class='note'>Method: {html.escape(imp['method'])}"
        + (f" <b>{html.escape(imp['note'])}.</b>" if imp.get("note") else "") + "</p>",
        _table(["parameter", "importance"],
               [[names.get(p, p), v] for p, v in sorted(imp["params"].items(), key=lambda kv: -kv[1])], left=1),
    ]

    # early stopping
    dec = ctx["early_stopping"]
    parts += [
        "<h2 id='early-stopping'>Early stopping</h2>",
        fig("early_stopping.png", "Epochs each trial ran, the scheduler's rungs, and the objective each trial "
                                  "had at each rung (crosses: cut there)."),
    ]
    if dec["rungs"]:
        parts.append(_table(["rung (epoch)", "reached", "cut here", "continued"],
                            [[r["epoch"], r["reached"], r["cut"], r["continued"]] for r in dec["rungs"]]))
    else:
        parts.append(f"<p class='note'>Scheduler {html.escape(dec['scheduler'])}: no rungs; "
                     f"{html.escape(NO_RUNGS.get(dec['scheduler'], ''))}.</p>")
    if ctx["pbt"]:
        chain = " ← ".join(f"{html.escape(seg['trial_id'])} (epochs {seg['from_epoch'] + 1}–{seg['to_epoch']})"
                           for seg in ctx["pbt"]["best_ancestry"])
        parts += [fig("pbt_lineage.png", "PBT exploits: which trial copied which donor, and when."),
                  f"<p>Best trial's ancestry (newest first): {chain}</p>",
                  _table(["epoch", "trial", "copied from", "new config"],
                         [[e["epoch"], e["trial_id"], e["donor"], json.dumps(e["config"])] for e in ctx["pbt"]["edges"]], left=0)]
    else:
        parts.append("<p class='note'>No PBT in this sweep (no exploit lineage to draw).</p>")

    # compute
    parts += [
        "<h2 id='compute'>Compute</h2>",
        fig("compute.png", "Epochs run vs. the full budget, and seconds per trial."),
        _table(["", "value"], [
            ["trial-seconds", f"{acct['trial_seconds']:.1f}"],
            ["wall seconds", f"{acct['wall_seconds']:.1f}"],
            ["mean trials in parallel", acct["parallelism"]],
            ["epochs run", acct["epochs_run"]],
            [f"full budget ({acct['trials']} trials × {acct['max_epochs']} epochs)", acct["full_budget_epochs"]],
            ["epochs saved", f"{acct['epochs_saved']} ({acct['epochs_saved_fraction']:.0%})"],
            ["est. seconds saved", f"{acct['estimated_seconds_saved']:.1f}"],
        ], left=1),
    ]

    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


# ============================================================================= the whole report
def generate_report(
    storage_uri: str,
    name: str,
    out_dir: str | Path | None = None,
    *,
    top: int | None = None,
    heatmap: tuple[str, str] | None = None,
    overfit_epochs: int | None = None,
    reuse_options: bool = False,
    publish: bool | None = None,
) -> Path:
    """Compute every analysis, draw every figure, write DIR/report.html + PNGs + report.json.

    Options left as None take their defaults (top 5, the first two grid parameters, 2 epochs), or
    with ``reuse_options`` those of the report already in DIR: `sweepctl evaluate` regenerates the
    page the user asked for with `sweepctl report --top 3 --heatmap ...`."""
    summary = read_summary(storage_uri, name)
    spec = read_spec(storage_uri, name)
    out = Path(out_dir) if out_dir else default_report_dir(storage_uri, name)
    publish = out_dir is None if publish is None else publish  # an explicit -o DIR stays local
    previous = (read_json_if_exists(out / REPORT_JSON) or {}).get("options", {}) if reuse_options else {}
    top = top if top is not None else previous.get("top", 5)
    heatmap = heatmap or (tuple(previous["heatmap"]) if previous.get("heatmap") else None)
    overfit_epochs = overfit_epochs if overfit_epochs is not None else previous.get("overfit_epochs", 2)
    metric, mode = objective(summary)
    params = varied_params(summary)
    names = short_names(params)

    leaderboard = leaderboard_rows(summary, top)
    overfit = {t["trial_id"]: detect_overfitting(t.get("history", []), overfit_epochs) for t in summary["trials"]}
    if heatmap:
        axes = (resolve_param(summary, heatmap[0]), resolve_param(summary, heatmap[1]))
        if axes[0] == axes[1]:
            raise ReportError(f"--heatmap needs two different parameters, got {axes[0]} twice")
    else:
        axes = default_heatmap_params(spec, summary)
    table = heatmap_table(summary, *axes) if axes else None
    heatmap_note = "" if table else (
        "No heatmap: it needs two grid parameters with more than one value each "
        f"(this sweep varies: {', '.join(params) or 'nothing'}); pick two with --heatmap X Y.")
    scheduler = spec.scheduler.model_dump(mode="json") if spec else None
    ctx = {
        "summary": summary,
        "names": names,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overfit_epochs": overfit_epochs,
        "leaderboard": leaderboard,
        "overfitting": overfit,
        "heatmap": table,
        "heatmap_note": heatmap_note,
        "importance": parameter_importance(summary),
        "early_stopping": rung_decisions(summary, scheduler),
        "pbt": pbt_lineage(summary),
        "compute": compute_accounting(summary),
        "evaluation": read_json_if_exists(out / EVALUATION_JSON),
    }

    ranked = {t["trial_id"]: t for t in ranked_trials(summary)}
    figures = {
        "leaderboard.png": fig_leaderboard(leaderboard, names),
        "learning_curves.png": fig_learning_curves([ranked[r["trial_id"]] for r in leaderboard], overfit, metric),
        "parallel_coordinates.png": fig_parallel(summary, names),
        "importance.png": fig_importance(ctx["importance"], names),
        "early_stopping.png": fig_early_stopping(ctx["early_stopping"], metric),
        "compute.png": fig_compute(ctx["compute"], summary),
    }
    if table:
        figures["heatmap.png"] = fig_heatmap(table, names, mode)
    if ctx["pbt"]:
        figures["pbt_lineage.png"] = fig_pbt_lineage(summary, ctx["pbt"])
    for png, data in figures.items():
        write_file(out / png, data)
    if ctx["evaluation"]:  # written by `sweepctl evaluate`; embedded as they are
        for png in ctx["evaluation"]["figures"]:
            if (out / png).exists():
                figures[png] = read_file(out / png)

    write_file(out / REPORT_HTML, render_html(ctx, figures))
    write_json(out / REPORT_JSON, {
        "sweep": summary["sweep"],
        "generated_at": ctx["generated_at"],
        "objective": summary["objective"],
        "options": {"top": top, "heatmap": list(heatmap) if heatmap else None, "overfit_epochs": overfit_epochs},
        "figures": sorted(figures),
        **{k: ctx[k] for k in ("leaderboard", "overfitting", "heatmap", "importance", "early_stopping", "pbt", "compute")},
        "evaluation": EVALUATION_JSON if ctx["evaluation"] else None,
    })
    if publish:
        publish_report(storage_uri, name, out)
    return out / REPORT_HTML
