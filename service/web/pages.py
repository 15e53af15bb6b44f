"""The web pages: server-rendered (Jinja2) over the same backend, record and trial API as the CLI.

    GET  /                                   → /ui/
    GET  /ui/login, POST /ui/login           log in once with a token (a session cookie from then on)
    POST /ui/logout
    GET  /ui/                                every sweep the backend knows: state, trials, best, owner
    GET  /ui/sweeps/{name}                   one sweep, live: headline, trial table, curves, charts
    GET  /ui/sweeps/{name}/trials/{id}       one trial: config, epochs, attempts, log, checkpoints
    GET  /ui/sweeps/{name}/report            the sweep's report.html, when `sweepctl report` wrote one
    GET  /ui/data/sweeps/{name}              what the sweep page draws, as JSON (it polls this)
    GET  /ui/data/sweeps/{name}/trials/{id}  what the trial page draws, as JSON
    GET  /ui/static/...                      our CSS/JS and plotly.js, from the plotly package

The rows of the trial table are ``trials_body`` (what `sweepctl trials --json` prints and the API
answers), so the page and the CLI always agree. Every asset comes from this server (clusters are
often offline): plotly.js is served from the Python package that bundles it, and the pages' CSP
allows nothing else. Charts are drawn in the browser from the JSON, so a running sweep's page
updates without a reload.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.core import storage
from service.core.checkpoint import MANIFEST
from service.core.record import FINISHED_STATES, RecordError, SweepIndex, SweepStore, TrialRecord, trials_body
from service.web.auth import COOKIE, LIFETIME_SECONDS

HERE = Path(__file__).parent
STATIC = HERE / "static"
TOP_CURVES = 5  # trials whose learning curves the sweep page shows by default: the best ones
MAX_CURVES = 20  # the most a page may ask curves for at once
ALL_RECORDS_UP_TO = 200  # sweeps this small get every trial's history (best-so-far, PBT lineage)
MAX_LOGIN_BYTES = 8192
# What the pages serve without a session: the way in, and our own assets. Every other page
# redirects to the login (the API routes answer 401).
OPEN_PAGES = frozenset({"/", "/ui/login", "/ui/logout", "/ui/static/{asset}"})
# Nothing from elsewhere: scripts and styles from this server only (Plotly sets inline styles).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def plotly_js() -> Path:
    """plotly.min.js as the plotly Python package ships it (no CDN)."""
    spec = find_spec("plotly")
    if spec is None or spec.origin is None:
        raise RuntimeError("the plotly package is not installed: pip install plotly (the pages' charts need it)")
    return Path(spec.origin).parent / "package_data" / "plotly.min.js"


class LoginRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


class RecordCache:
    """Trial records of ended trials, kept: they no longer change, so a page that polls a sweep
    reads only its running trials again. Bounded (least recently used go first)."""

    def __init__(self, size: int = 5000):
        self.size = size
        self._lock = threading.Lock()
        self._records: OrderedDict[tuple[str, str], TrialRecord] = OrderedDict()

    def read(self, store: SweepStore, index: SweepIndex, trial_ids: list[str]) -> dict[str, TrialRecord]:
        found = {}
        for trial_id in trial_ids:
            summary = index.trial(trial_id)
            key = (store.uri, trial_id)
            with self._lock:
                cached = self._records.get(key)
            if (cached is not None and summary is not None and summary.status in FINISHED_STATES
                    and cached.status == summary.status and cached.epochs == summary.epochs):
                found[trial_id] = cached
                continue
            record = store.read_trial(trial_id)
            if record is None:
                continue
            found[trial_id] = record
            if record.status in FINISHED_STATES:
                with self._lock:
                    self._records[key] = record
                    self._records.move_to_end(key)
                    while len(self._records) > self.size:
                        self._records.popitem(last=False)
        return found


# ============================================================================ what the pages draw
def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def curves_of(record: TrialRecord) -> dict:
    """Per-epoch metrics of one trial, columns by name (what Plotly draws)."""
    keys = ("val_acc", "val_loss", "train_acc", "train_loss", "lr", "epoch_seconds")
    return {"epoch": [h.epoch for h in record.history],
            **{k: [_finite(getattr(h, k)) for h in record.history] for k in keys}}


def best_so_far(index: SweepIndex, records: dict[str, TrialRecord]) -> dict:
    """The sweep's best objective after each epoch ended, by when it ended: each trial's start plus
    its epochs' own seconds (the record keeps no clock time per epoch), in minutes since the sweep began."""
    metric, events = index.objective.metric, []
    for record in records.values():
        offset = _seconds_between(index.started_at, record.started_at)
        if offset is None:
            continue
        elapsed = max(offset, 0.0)
        for entry in record.history:
            elapsed += entry.epoch_seconds or 0.0
            value = entry.metric(metric)
            if value is not None:
                events.append((elapsed, value, record.trial_id, entry.epoch))
    events.sort()
    x, y, trial, epoch, best = [], [], [], [], None
    for elapsed, value, trial_id, at_epoch in events:
        if best is None or index.objective.better(value, best):
            best = value
            x.append(round(elapsed / 60, 3))
            y.append(value)
            trial.append(trial_id)
            epoch.append(at_epoch)
    return {"minutes": x, "best": y, "trial": trial, "epoch": epoch}


def asha_rungs(spec_text: str | None, max_epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials (grace_period · reduction_factor^k, up to the budget)."""
    scheduler = _scheduler(spec_text)
    if scheduler.get("name") != "asha":
        return []
    rungs, rung = [], float(scheduler.get("grace_period", 1))
    factor = float(scheduler.get("reduction_factor", 3))
    while rung < max_epochs and factor > 1:
        rungs.append(int(round(rung)))
        rung *= factor
    return rungs


def _scheduler(spec_text: str | None) -> dict:
    import yaml

    try:
        spec = yaml.safe_load(spec_text or "") or {}
        scheduler = spec.get("scheduler") or {}
        return scheduler if isinstance(scheduler, dict) else {}
    except yaml.YAMLError:
        return {}


def sweep_view(store: SweepStore, info, cache: RecordCache, selected: list[str] = ()) -> dict:
    """Everything the sweep page draws, in one answer (the page polls it while the sweep runs)."""
    index = store.read_index()
    head = {"sweep": store.name, "state": info.state, "owner": info.owner, "message": info.message,
            "storage": store.uri}
    if index is None:
        return {**head, "index": None}
    spec_text = _spec_text(store)
    scheduler = _scheduler(spec_text).get("name", "fifo")
    table = trials_body(index)
    config_keys = sorted({k for t in index.trials for k in t.config})
    top = [t.trial_id for t in index.ranked()[:TOP_CURVES]]
    wanted = list(dict.fromkeys([*top, *[s for s in selected if index.trial(s)]]))[:MAX_CURVES]
    small = len(index.trials) <= ALL_RECORDS_UP_TO
    records = cache.read(store, index, [t.trial_id for t in index.trials] if small else wanted)
    lineage = []
    if scheduler == "pbt":
        for record in records.values():
            for exploit in record.exploits:
                donor = records.get(exploit.donor)
                donor_value = next((h.metric(index.objective.metric) for h in donor.history
                                    if h.epoch == exploit.epoch), None) if donor else None
                lineage.append({"trial": record.trial_id, "donor": exploit.donor, "epoch": exploit.epoch,
                                "donor_value": _finite(donor_value), "config": exploit.config})
    best = index.best
    return {
        **head,
        "index": {
            "status": index.status, "objective": index.objective.model_dump(), "num_trials": index.num_trials,
            "max_epochs": index.max_epochs, "trial_states": index.trial_states, "started_at": index.started_at,
            "updated_at": index.updated_at, "wall_seconds": index.wall_seconds, "stop_reason": index.stop_reason,
            "driver_attempt": index.driver_attempt,
            "epochs_run": sum(t.epochs for t in index.trials),
            "epoch_budget": index.num_trials * index.max_epochs,
            "best_trial": best.trial_id if best else None,
            "best_value": _finite(best.best.metric(index.objective.metric)) if best and best.best else None,
            "best_epoch": best.best.epoch if best and best.best else None,
            "objectives": [o.model_dump() for o in index.objectives],  # several: the Pareto front's
            "pareto_front": index.pareto_front,
            "constraints": [c.text for c in index.constraints],
        },
        "scheduler": scheduler,
        "config_keys": config_keys,
        "trials": table["trials"],
        "curves": {trial_id: curves_of(records[trial_id]) for trial_id in wanted if trial_id in records},
        "curve_trials": wanted,
        "best_so_far": best_so_far(index, records) if small else None,
        "rungs": asha_rungs(spec_text, index.max_epochs),
        "lineage": lineage,
        "report": storage.file_exists(storage.join(store.report_uri, "report.html")),
    }


def _spec_text(store: SweepStore) -> str | None:
    try:
        return store.read_spec_text()
    except (FileNotFoundError, storage.StorageError):
        return None


def trial_view(store: SweepStore, info, trial_id: str) -> dict | None:
    record = store.read_trial(trial_id)
    if record is None:
        return None
    checkpoints = []
    for ref in record.checkpoints:
        try:
            manifest = storage.read_json(storage.join(ref.uri, MANIFEST))
            digests = manifest.get("sha256", {}) if isinstance(manifest, dict) else {}
        except (FileNotFoundError, ValueError, storage.StorageError):
            digests = None  # gone (retention) or unreadable: the page says so
        checkpoints.append({"uri": ref.uri, "epoch": ref.epoch, "objective": _finite(ref.objective), "sha256": digests})
    attempts = sorted({h.attempt for h in record.history})
    return {
        "sweep": store.name, "state": info.state, "trial": record.model_dump(mode="json"),
        "curves": curves_of(record), "checkpoints": checkpoints, "driver_attempts": attempts,
        "pull": f"sweepctl pull {store.name} --trial {record.trial_id} --storage {store.storage_uri}",
        "running": record.status in ("pending", "running", "paused") and info.state in ("running", "pending"),
    }


# ============================================================================ the routes
def add_pages(app: FastAPI, *, backend, sessions, anonymous, secure_cookies: bool) -> None:
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["j2", "html"]))
    templates.filters["minutes"] = lambda s: f"{int(s or 0) // 60}:{int(s or 0) % 60:02d}"
    cache = RecordCache()
    read_only = getattr(backend, "read_only", False)

    def viewer(request: Request):
        """(user, session) for a page: a session cookie, a bearer token, or the anonymous viewer;
        else the login page."""
        session = sessions.from_request(request)
        if session is not None:
            return session.user, session
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            user = app.state.users.find(header[7:].strip())
            if user is not None:
                return user, None
        if anonymous is not None:
            return anonymous, None
        raise LoginRequired(request.url.path)

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        user, session = context.pop("who", (None, None))
        html = templates.get_template(template).render(
            user=user, csrf=session.csrf if session else "", logged_in=session is not None, read_only=read_only,
            may_cancel=bool(user and user.may("submitter")) and not read_only, **context)
        return HTMLResponse(html, status, headers=_headers())

    def store_of(name: str):
        info = backend.get(name)  # 404 (BackendError) for a sweep the backend does not know
        return info, SweepStore(info.storage_uri, name)

    @app.exception_handler(LoginRequired)
    async def to_login(_request, err: LoginRequired):
        return RedirectResponse(f"/ui/login?next={quote(err.next_path)}", 303, headers=_headers())

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui/", 303)

    @app.get("/ui/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/ui/"):
        return page(request, "login.html.j2", next=_safe_next(next), error=None)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request):
        if not _same_origin(request):  # another site's form must not log a browser into our pages
            return page(request, "login.html.j2", 403, next="/ui/", error="a login from another site's page is refused")
        body = await request.body()
        if len(body) > MAX_LOGIN_BYTES:
            return page(request, "login.html.j2", 413, next="/ui/", error="that form is too large")
        form = parse_qs(body.decode(errors="replace"))
        token, next_path = (form.get("token") or [""])[0], _safe_next((form.get("next") or ["/ui/"])[0])
        opened = sessions.login(token)
        if opened is None:
            return page(request, "login.html.j2", 401, next=next_path,
                        error="wrong token: use the token your admin gave you (the one sweepctl uses)")
        session_id, _session = opened
        response = RedirectResponse(next_path, 303, headers=_headers())
        response.set_cookie(COOKIE, session_id, max_age=LIFETIME_SECONDS, httponly=True, samesite="strict",
                            secure=secure_cookies, path="/")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request):
        session = sessions.from_request(request)
        form = parse_qs((await request.body())[:MAX_LOGIN_BYTES].decode(errors="replace"))
        if session is not None and session.csrf_ok((form.get("csrf") or [""])[0]):
            sessions.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/ui/login", 303, headers=_headers())
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/ui/", include_in_schema=False)
    def sweeps_page(request: Request):
        who = viewer(request)
        rows = []
        for info in backend.list():
            row = {"name": info.name, "state": info.state, "owner": info.owner, "created": info.created}
            try:
                index = SweepStore(info.storage_uri, info.name).read_index()
            except (storage.StorageError, RecordError) as err:
                index, row["problem"] = None, str(err)
            if index is not None:
                best = index.best
                row.update(states=index.trial_states, num_trials=index.num_trials, started=index.started_at,
                           wall_seconds=index.wall_seconds, metric=index.objective.metric,
                           best=_finite(best.best.metric(index.objective.metric)) if best and best.best else None,
                           best_trial=best.trial_id if best else None)
            rows.append(row)
        return page(request, "sweeps.html.j2", who=who, sweeps=rows)

    @app.get("/ui/sweeps/{name}", include_in_schema=False)
    def sweep_page(request: Request, name: str):
        who = viewer(request)
        info, store = store_of(name)
        view = sweep_view(store, info, cache)
        return page(request, "sweep.html.j2", who=who, view=view, name=name)

    @app.get("/ui/data/sweeps/{name}", include_in_schema=False)
    def sweep_data(request: Request, name: str, trials: str = ""):
        viewer(request)
        info, store = store_of(name)
        selected = [t for t in trials.split(",") if t][:MAX_CURVES]
        return JSONResponse(sweep_view(store, info, cache, selected), headers=_headers())

    @app.get("/ui/sweeps/{name}/trials/{trial_id}", include_in_schema=False)
    def trial_page(request: Request, name: str, trial_id: str):
        who = viewer(request)
        info, store = store_of(name)
        view = _trial_or_404(store, info, trial_id)
        if isinstance(view, Response):
            return view
        return page(request, "trial.html.j2", who=who, view=view, name=name)

    @app.get("/ui/data/sweeps/{name}/trials/{trial_id}", include_in_schema=False)
    def trial_data(request: Request, name: str, trial_id: str):
        viewer(request)
        info, store = store_of(name)
        view = _trial_or_404(store, info, trial_id)
        return view if isinstance(view, Response) else JSONResponse(view, headers=_headers())

    @app.get("/ui/sweeps/{name}/report", include_in_schema=False)
    def report(request: Request, name: str):
        viewer(request)
        _info, store = store_of(name)
        try:
            html = storage.read_bytes(storage.join(store.report_uri, "report.html"))
        except FileNotFoundError:
            return JSONResponse({"detail": f"sweep '{name}' has no report yet: `sweepctl report {name}` writes one"}, 404)
        return HTMLResponse(html, headers={**_headers(), "Content-Security-Policy": REPORT_CSP})

    @app.get("/ui/static/{asset}", include_in_schema=False)
    def static(asset: str):
        path = plotly_js() if asset == "plotly.min.js" else STATIC / asset
        if "/" in asset or asset.startswith(".") or not path.is_file():
            return JSONResponse({"detail": f"no asset {asset!r}"}, 404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


def _trial_or_404(store: SweepStore, info, trial_id: str):
    try:
        view = trial_view(store, info, trial_id)
    except RecordError as err:
        return JSONResponse({"detail": str(err)}, 404)
    if view is None:
        return JSONResponse({"detail": f"no trial {trial_id!r} in sweep '{store.name}'"}, 404)
    return view


def _same_origin(request: Request) -> bool:
    """A form posted from one of our pages: its Origin (browsers send one with every POST) names
    this server. No Origin (curl, an old browser): allowed, SameSite and the token still apply."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1].rstrip("/") == request.headers.get("host", "")


def _safe_next(path: str) -> str:
    """Where to go after the login: a page of ours only (never another site: no open redirect)."""
    return path if path.startswith("/ui/") and not path.startswith("//") and "\\" not in path else "/ui/"


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store"}


def to_json(value: Any) -> str:
    return json.dumps(value)
