"""Sweep reports: the studies' hand-made analyses, computed from the sweep record and drawn as one page.

    sweepctl report NAME [-o DIR]   →  DIR/report.html (PNGs embedded), DIR/*.png, DIR/report.json
    (the same, <storage>/<name>/report/, at the end of every finished sweep: its driver calls
     write_sweep_report unless the spec says report: {auto: false})

This module is the entry point and the I/O: it reads the record through ``SweepStore``
(service/core/record.py) and writes the report's files; the rest is in four modules, so tests
can check the numbers without looking at pictures:

    analyses.py   pure functions of the typed record (SweepIndex + list[TrialRecord])
    stats.py      the noise scale: standard errors, the indistinguishable set, the overfitting flag
    figures.py    matplotlib figures (object API, Agg), PNG bytes
    page.py       report.html through the Jinja2 template templates/report.html.j2

Test-set results (``sweepctl evaluate``, trainer/evaluate.py) land in the same directory as
evaluation.json + PNGs; the report includes them when present.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from html import unescape
from pathlib import Path
from typing import Any, Callable

import yaml

from service.analysis import analyses, figures, page, stats
from service.core import storage
from service.core.record import RecordError, SweepIndex, SweepStore, now_iso
from service.core.spec import SweepSpec, spec_notes

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
EVALUATION_JSON = "evaluation.json"


class ReportError(Exception):
    """Something the user can fix (unknown sweep, unknown parameter); printed without a traceback."""


# ============================================================================= I/O
def read_index(store: SweepStore) -> SweepIndex:
    try:
        index = store.read_index()
    except RecordError as err:
        raise ReportError(str(err)) from None
    if index is None:
        raise ReportError(f"no sweep '{store.name}' under {store.storage_uri} (looked for {store.index_uri}); "
                          f"pass --storage URI")
    return index


def read_spec(store: SweepStore) -> SweepSpec | None:
    """The resolved spec the sweep ran with; None when it is missing (the report then does
    without it: no rung milestones, each parameter's distribution guessed from its values)."""
    try:
        text = store.read_spec_text()
    except FileNotFoundError:
        return None
    return SweepSpec.model_validate(yaml.safe_load(text))


def default_report_dir(storage_uri: str, name: str) -> Path:
    """Local storage: <storage>/<name>/report. S3: ./reports/<name> here, uploaded to
    <storage>/<name>/report/ when written (see publish_report)."""
    remote = SweepStore(storage_uri, name).report_uri
    if storage.is_s3(storage_uri):
        out = Path("reports", name).resolve()
        if not (out / REPORT_JSON).exists() and storage.exists(remote):
            storage.download_dir(remote, out)  # keep an earlier evaluation and the report's options
        return out
    return storage.local_path(remote)


def publish_report(storage_uri: str, name: str, out: Path) -> None:
    """S3 storage: copy the report next to the sweep, so everyone reading the bucket sees it."""
    if storage.is_s3(storage_uri):
        copy_report(out, SweepStore(storage_uri, name).report_uri)


def copy_report(out: Path, remote: str) -> None:
    """Every file of the report directory ``out`` into the directory or prefix ``remote``."""
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


# ============================================================================= the whole report
DEFAULTS = {"top": 5, "heatmap": None, "overfit_epochs": stats.OVERFIT_EPOCHS, "overfit_k": stats.OVERFIT_K,
            "at_epoch": None, "curves": None, "small_multiples": False}


def generate_report(
    storage_uri: str,
    name: str,
    out: str | Path | None = None,
    *,
    top: int | None = None,
    heatmap: tuple[str, str] | None = None,
    overfit_epochs: int | None = None,
    overfit_k: float | None = None,
    at_epoch: int | str | None = None,
    curves: list[str] | None = None,
    small_multiples: bool | None = None,
    reuse_options: bool = False,
    publish: bool | None = None,
) -> Path:
    """Compute every analysis, draw every figure, write OUT/report.html + PNGs + report.json.

    Options left as None take their defaults (DEFAULTS: top 5; heatmap on the two most important
    parameters; overfitting after 2 epochs above 2 SE; comparisons at the last shared rung; curves
    of the top trials, overlaid), or with ``reuse_options`` those of the report already in OUT:
    `sweepctl evaluate` regenerates the page the user asked for with `sweepctl report --top 3 ...`.
    ``at_epoch``: an epoch, or "best" for each trial's best epoch. ``curves``: trial ids to draw
    instead of the top trials. ``publish`` (default: when OUT is the default directory) copies the
    report next to an S3 sweep."""
    store = SweepStore(storage_uri, name)
    index = read_index(store)
    trials = store.read_trials(index)
    if not index.ranked(trials):  # every figure and analysis needs a score to show
        raise ReportError(
            f"sweep '{name}' has no scored trial yet ({len(trials)} trial{'s' if len(trials) != 1 else ''}, none "
            f"has reported a {index.objective.metric} yet): run sweepctl report again once one has "
            f"(sweepctl trials {name} --storage {storage_uri} shows where they are)")
    spec = read_spec(store)
    publish = out is None if publish is None else publish  # an explicit -o DIR stays local
    out = Path(out) if out else default_report_dir(storage_uri, name)
    previous = (read_json_if_exists(out / REPORT_JSON) or {}).get("options", {}) if reuse_options else {}
    given = {"top": top, "heatmap": tuple(heatmap) if heatmap else None, "overfit_epochs": overfit_epochs,
             "overfit_k": overfit_k, "at_epoch": at_epoch, "curves": list(curves) if curves else None,
             "small_multiples": small_multiples}
    options = {k: v if v is not None else previous.get(k, DEFAULTS[k]) for k, v in given.items()}
    if options["heatmap"]:
        options["heatmap"] = tuple(options["heatmap"])
    metric, mode = index.objective.metric, index.objective.mode
    params = analyses.varied_params(trials)
    names = analyses.short_names(params)
    by_id = {t.trial_id: t for t in trials}

    try:
        axes = tuple(analyses.resolve_param(trials, p) for p in options["heatmap"]) if options["heatmap"] else None
        scheduler = spec.scheduler.model_dump(mode="json") if spec else None
        budget = analyses.comparison_budget(index, trials, scheduler, options["at_epoch"])
    except analyses.AnalysisError as err:
        raise ReportError(str(err)) from None
    if axes and axes[0] == axes[1]:
        raise ReportError(f"--heatmap needs two different parameters, got {axes[0]} twice")
    unknown = [t for t in options["curves"] or [] if t not in by_id]
    if unknown:
        raise ReportError(f"--curves: no trial {', '.join(unknown)} in sweep '{name}' (sweepctl trials {name} lists them)")

    importance = analyses.parameter_importance(index, trials, spec=spec, scores=budget["scores"])
    axes = axes or analyses.heatmap_axes(spec, trials, importance, budget["scores"])
    table = analyses.heatmap(index, trials, spec, *axes, budget["scores"], budget["label"]) if axes else None
    leaderboard, ties = analyses.leaderboard_rows(index, trials, options["top"])
    decisions = analyses.rung_decisions(index, trials, scheduler)
    stops = analyses.trial_stops(trials, decisions)
    overfitting = {t.trial_id: stats.detect_overfitting(t.history, options["overfit_epochs"], options["overfit_k"])
                   for t in trials}
    shown = [by_id[t] for t in options["curves"]] if options["curves"] else [by_id[r["trial_id"]] for r in leaderboard]
    labels = analyses.config_labels(shown, names)
    ranks = {t.trial_id: i for i, t in enumerate(index.ranked(trials), 1)}
    evaluation = read_json_if_exists(out / EVALUATION_JSON)
    if evaluation:
        evaluation["test_accuracy_se"] = stats.binomial_se(evaluation["test_accuracy"], evaluation["test_size"])
        evaluation["test_accuracy_ci95"] = list(stats.wilson_interval(evaluation["test_accuracy"], evaluation["test_size"]))
    ctx = {
        "index": index,
        "trials": trials,
        "params": params,
        "names": names,
        "generated_at": now_iso(),
        "options": options,
        "spec_seed": spec.seed if spec else None,
        "rules": {"se": stats.SE_RULE, "indistinguishable": stats.INDISTINGUISHABLE_RULE,
                  "overfitting": overfit_rule(options["overfit_epochs"], options["overfit_k"])},
        "cards": analyses.cards(index, evaluation),
        "leaderboard": leaderboard,
        "pareto": analyses.pareto(index, trials),
        "infeasible": analyses.infeasible_rows(trials),
        "notes": {"inference": analyses.INFERENCE_NOTE, "spec": spec_notes(spec) if spec else []},
        "indistinguishable": ties,
        "replicates": stats.replicate_groups(trials, metric),
        "budget": budget,
        "overfitting": overfitting,
        "curves": {"trials": [t.trial_id for t in shown], "labels": labels, "stops": stops},
        "heatmap": table,
        "heatmap_note": "" if table else (
            "No heatmap: it needs two parameters that each take more than one value among the compared trials "
            f"(this sweep varies: {', '.join(params) or 'nothing'}); pick two with --heatmap X Y."),
        "importance": importance,
        "early_stopping": decisions,
        "pbt": analyses.pbt_lineage(index, trials),
        "compute": analyses.compute_accounting(index, trials),
        "evaluation": evaluation,
    }

    pngs = {
        "leaderboard.png": figures.fig_leaderboard(leaderboard, names, metric),
        "learning_curves.png": figures.fig_curves(shown, labels, stops, overfitting, ranks),
        "parallel_coordinates.png": figures.fig_parallel(index, trials, names, budget["scores"], budget["label"]),
        "importance.png": figures.fig_importance(importance, names),
        "early_stopping.png": figures.fig_early_stopping(decisions, metric),
        "compute.png": figures.fig_compute(ctx["compute"]),
    }
    if options["small_multiples"]:
        pngs["learning_curves_grid.png"] = figures.fig_learning_curves(shown, overfitting, metric, labels, stops)
    if table:
        pngs["heatmap.png"] = (figures.fig_heatmap if table["kind"] == "grid" else figures.fig_scatter)(table, names, mode)
    if ctx["pbt"]:
        pngs["pbt_lineage.png"] = figures.fig_pbt_lineage(trials, ctx["pbt"])
    if ctx["pareto"]:
        pngs["pareto.png"] = figures.fig_pareto(ctx["pareto"])
    for stale in ("learning_curves_grid.png", "heatmap.png", "pareto.png"):  # from an earlier report with other options
        if stale not in pngs:
            (out / stale).unlink(missing_ok=True)
    for png, data in pngs.items():
        write_file(out / png, data)
    if evaluation:  # written by `sweepctl evaluate`; embedded as they are
        for png in evaluation["figures"]:
            if (out / png).exists():
                pngs[png] = read_file(out / png)

    write_file(out / REPORT_HTML, page.render_html(ctx, pngs))
    saved = {**options, "heatmap": list(options["heatmap"]) if options["heatmap"] else None}
    write_json(out / REPORT_JSON, {
        "sweep": index.sweep,
        "generated_at": ctx["generated_at"],
        "objective": index.objective.model_dump(mode="json"),
        "options": saved,
        "figures": sorted(pngs),
        **{k: ctx[k] for k in ("rules", "cards", "leaderboard", "pareto", "infeasible", "indistinguishable", "replicates", "budget",
                               "overfitting", "curves", "heatmap", "importance", "early_stopping", "pbt", "compute")},
        "evaluation": EVALUATION_JSON if evaluation else None,
    })
    if publish:
        publish_report(storage_uri, name, out)
    return out / REPORT_HTML


# ============================================================================= at the end of a sweep
def write_sweep_report(storage_uri: str, name: str, *, fenced: Callable[[], bool] = lambda: False) -> str | None:
    """The report a sweep's driver writes once the sweep finished (spec ``report.auto``): what
    `sweepctl report NAME` writes, where it writes it (<storage>/<name>/report/, local or S3),
    keeping what is there already (an earlier `sweepctl evaluate`'s test-set results). Drawn in a
    scratch directory and copied into place only if ``fenced()`` is still false then: a driver
    that lost its sweep to a newer attempt writes nothing. Returns report.html's URI (None: fenced)."""
    remote = SweepStore(storage_uri, name).report_uri
    with tempfile.TemporaryDirectory(prefix="sweep-report-") as scratch:
        storage.download_dir(remote, Path(scratch))  # nothing there yet for a sweep's first report
        generate_report(storage_uri, name, scratch, publish=False)
        if fenced():
            return None
        copy_report(Path(scratch), remote)
    return storage.join(remote, REPORT_HTML)


def overfit_rule(epochs: int, k: float) -> str:
    return (f"Flagged when, after the epoch of minimum val loss, the val loss stays more than k = {k:g} standard errors "
            f"of the mean val loss (the larger of the two epochs' val_loss_se: std of the per-image losses / sqrt(n)) "
            f"above that minimum for N = {epochs} consecutive epochs, while the train loss stays below its value at "
            f"the minimum. A rise within the noise, a single spike, a val loss that comes back below its minimum, or "
            f"both losses rising (a diverging learning rate) is not flagged. Conservative: every epoch is scored on the "
            f"same images, so two epochs differ by less noise than one epoch's SE, and a slow drift within it goes "
            f"unflagged (the table shows where each last epoch stands). --overfit-k K, --overfit-epochs N.")


# ============================================================================= the README's screenshot
def screenshot_record(storage_uri: str, name: str) -> dict:
    """What `make report-screenshot` keeps beside docs/report.png (docs/report-record.json): the
    resolved spec the sweep ran, its index and test-set numbers (the record the cards come from)
    and the cards as the page shows them (read back from report.html). tests/trainer/test_report.py checks that the
    cards match the record and that the spec is the current quickstart's."""
    store = SweepStore(storage_uri, name)
    out = default_report_dir(storage_uri, name)
    html = (out / REPORT_HTML).read_text()
    evaluation = read_json_if_exists(out / EVALUATION_JSON)
    shown = [{"label": unescape(label), "value": unescape(value), "detail": unescape(detail)}
             for label, value, detail in CARD_HTML.findall(html)]
    spec = yaml.safe_load(store.read_spec_text())
    spec.pop("storage", None)  # where it ran is not what it is
    return {"sweep": name, "spec": spec, "index": read_index(store).model_dump(mode="json"),
            "evaluation": {k: evaluation[k] for k in ("trial_id", "test_accuracy", "test_size", "test_loss")}
            if evaluation else None, "cards": shown}


CARD_HTML = re.compile(r'<div class="card">(.*?)<b>(.*?)</b><small>(.*?)</small></div>', re.S)
