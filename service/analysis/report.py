"""Sweep reports: the studies' hand-made analyses, computed from the sweep record and drawn as one page.

    sweepctl report NAME [-o DIR]   →  DIR/report.html (PNGs embedded), DIR/*.png, DIR/report.json

This module is the entry point and the I/O: it reads the record through ``SweepStore``
(service/core/record.py) and writes the report's files; the rest is in three modules, so tests
can check the numbers without looking at pictures:

    analyses.py   pure functions of the typed record (SweepIndex + list[TrialRecord])
    figures.py    matplotlib figures (object API, Agg), PNG bytes
    page.py       report.html through the Jinja2 template templates/report.html.j2

Test-set results (``sweepctl evaluate``, trainer/evaluate.py) land in the same directory as
evaluation.json + PNGs; the report includes them when present.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from service.analysis import analyses, figures, page
from service.core import storage
from service.core.record import RecordError, SweepIndex, SweepStore, now_iso, ranked
from service.core.spec import SweepSpec

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
    """The resolved spec the sweep ran with; None when it is missing (the report then skips
    what needs it: rung milestones, the default heatmap axes)."""
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
    if not storage.is_s3(storage_uri):
        return
    remote = SweepStore(storage_uri, name).report_uri
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
def generate_report(
    storage_uri: str,
    name: str,
    out: str | Path | None = None,
    *,
    top: int | None = None,
    heatmap: tuple[str, str] | None = None,
    overfit_epochs: int | None = None,
    reuse_options: bool = False,
    publish: bool | None = None,
) -> Path:
    """Compute every analysis, draw every figure, write OUT/report.html + PNGs + report.json.

    Options left as None take their defaults (top 5, the first two grid parameters, 2 epochs), or
    with ``reuse_options`` those of the report already in OUT: `sweepctl evaluate` regenerates the
    page the user asked for with `sweepctl report --top 3 --heatmap ...`. ``publish`` (default:
    when OUT is the default directory) copies the report next to an S3 sweep."""
    store = SweepStore(storage_uri, name)
    index = read_index(store)
    trials = store.read_trials(index)
    if not ranked(trials, index.objective):  # every figure and analysis needs a score to show
        raise ReportError(
            f"sweep '{name}' has no scored trial yet ({len(trials)} trial{'s' if len(trials) != 1 else ''}, none "
            f"has reported a {index.objective.metric} yet): run sweepctl report again once one has "
            f"(sweepctl trials {name} --storage {storage_uri} shows where they are)")
    spec = read_spec(store)
    publish = out is None if publish is None else publish  # an explicit -o DIR stays local
    out = Path(out) if out else default_report_dir(storage_uri, name)
    previous = (read_json_if_exists(out / REPORT_JSON) or {}).get("options", {}) if reuse_options else {}
    top = top if top is not None else previous.get("top", 5)
    heatmap = heatmap or (tuple(previous["heatmap"]) if previous.get("heatmap") else None)
    overfit_epochs = overfit_epochs if overfit_epochs is not None else previous.get("overfit_epochs", 2)
    metric, mode = index.objective.metric, index.objective.mode
    params = analyses.varied_params(trials)
    names = analyses.short_names(params)

    try:
        axes = tuple(analyses.resolve_param(trials, p) for p in heatmap) if heatmap else None
    except analyses.AnalysisError as err:
        raise ReportError(str(err)) from None
    if axes and axes[0] == axes[1]:
        raise ReportError(f"--heatmap needs two different parameters, got {axes[0]} twice")
    axes = axes or analyses.default_heatmap_params(spec, trials)
    table = analyses.heatmap_table(index, trials, *axes) if axes else None
    scheduler = spec.scheduler.model_dump(mode="json") if spec else None
    leaderboard = analyses.leaderboard_rows(index, trials, top)
    ctx = {
        "index": index,
        "trials": trials,
        "params": params,
        "names": names,
        "generated_at": now_iso(),
        "overfit_epochs": overfit_epochs,
        "leaderboard": leaderboard,
        "overfitting": {t.trial_id: analyses.detect_overfitting(t.history, overfit_epochs) for t in trials},
        "heatmap": table,
        "heatmap_note": "" if table else (
            "No heatmap: it needs two grid parameters with more than one value each "
            f"(this sweep varies: {', '.join(params) or 'nothing'}); pick two with --heatmap X Y."),
        "importance": analyses.parameter_importance(index, trials),
        "early_stopping": analyses.rung_decisions(index, trials, scheduler),
        "pbt": analyses.pbt_lineage(index, trials),
        "compute": analyses.compute_accounting(index, trials),
        "evaluation": read_json_if_exists(out / EVALUATION_JSON),
    }

    by_id = {t.trial_id: t for t in trials}
    pngs = {
        "leaderboard.png": figures.fig_leaderboard(leaderboard, names),
        "learning_curves.png": figures.fig_learning_curves([by_id[r["trial_id"]] for r in leaderboard],
                                                           ctx["overfitting"], metric),
        "parallel_coordinates.png": figures.fig_parallel(index, trials, names),
        "importance.png": figures.fig_importance(ctx["importance"], names),
        "early_stopping.png": figures.fig_early_stopping(ctx["early_stopping"], metric),
        "compute.png": figures.fig_compute(ctx["compute"], trials),
    }
    if table:
        pngs["heatmap.png"] = figures.fig_heatmap(table, names, mode)
    if ctx["pbt"]:
        pngs["pbt_lineage.png"] = figures.fig_pbt_lineage(trials, ctx["pbt"])
    for png, data in pngs.items():
        write_file(out / png, data)
    if ctx["evaluation"]:  # written by `sweepctl evaluate`; embedded as they are
        for png in ctx["evaluation"]["figures"]:
            if (out / png).exists():
                pngs[png] = read_file(out / png)

    write_file(out / REPORT_HTML, page.render_html(ctx, pngs))
    write_json(out / REPORT_JSON, {
        "sweep": index.sweep,
        "generated_at": ctx["generated_at"],
        "objective": index.objective.model_dump(mode="json"),
        "options": {"top": top, "heatmap": list(heatmap) if heatmap else None, "overfit_epochs": overfit_epochs},
        "figures": sorted(pngs),
        **{k: ctx[k] for k in ("leaderboard", "overfitting", "heatmap", "importance", "early_stopping", "pbt", "compute")},
        "evaluation": EVALUATION_JSON if ctx["evaluation"] else None,
    })
    if publish:
        publish_report(storage_uri, name, out)
    return out / REPORT_HTML
