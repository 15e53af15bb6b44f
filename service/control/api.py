"""The sweep service: an HTTP API over a backend (RayJobs in a Kubernetes namespace, or local processes).

    POST   /sweeps              spec as YAML or JSON (+ ?set=key=value, repeatable) → 201 | 409 | 422
    GET    /sweeps              name, state, created of every sweep
    GET    /sweeps/{name}       state from the backend + progress from the sweep's index
    DELETE /sweeps/{name}       cancel
    GET    /sweeps/{name}/best  the best trial so far: config, metrics, checkpoint URI
    GET    /sweeps/{name}/logs  the driver's log (text)
    GET    /sweeps/{name}/trials               every trial: status, config, best metrics (?sort=, ?status=)
    GET    /sweeps/{name}/trials/{id}          one trial: history, checkpoints, exploits, error, log pointer
    GET    /sweeps/{name}/trials/{id}/logs     the trial's stdout/stderr and traceback, every attempt (text)
    GET    /healthz, /metrics   open: probes and Prometheus

Everything else needs ``Authorization: Bearer $SWEEP_SERVICE_TOKEN``. Specs are validated by the
same loader as ``sweepctl validate``, so a bad spec gets the CLI's messages. Errors always come
back as JSON ``{"detail": ...}`` saying what failed; a Kubernetes API error keeps the API
server's own message.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from pydantic import BaseModel

from service.core import storage
from service.control.backends import Backend, BackendError, SweepInfo
from service.core.errors import UserError
from service.core.loading import SpecError, parse_spec
from service.core.record import (
    TRIAL_STATES, Objective, RecordError, SweepIndex, SweepStore, TrialRecord, TrialSummary, trials_body,
)
from service.core.spec import num_trials

log = logging.getLogger("sweep-service")

TOKEN_ENV = "SWEEP_SERVICE_TOKEN"
BACKEND_ENV = "SWEEP_SERVICE_BACKEND"
NAMESPACE_ENV = "SWEEP_SERVICE_NAMESPACE"
CONFIG_ENV = "SWEEP_SERVICE_CONFIG"
WORKDIR_ENV = "SWEEP_SERVICE_WORKDIR"
DEFAULT_CONFIG = "/etc/sweep-service/config.yaml"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Routes anyone may call: probes, Prometheus, and the API's own description.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/docs", "/openapi.json"})
MAX_SPEC_BYTES = 1 << 20
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain", "")


class ServiceConfigError(UserError):
    """The service cannot start as configured; the message says which setting to fix."""


# ============================================================================ response models
class Progress(BaseModel):
    """The part of the sweep's index a status line needs (per-trial lines: /trials)."""

    status: str
    num_trials: int
    trial_states: dict[str, int]
    objective: Objective
    best_trial: str | None
    best: TrialSummary | None
    started_at: str
    updated_at: str
    wall_seconds: float


class SweepStatus(BaseModel):
    name: str
    state: str
    created: str
    storage_uri: str
    message: str = ""
    progress: Progress | None = None
    storage_error: str | None = None


class SweepCreated(BaseModel):
    name: str
    state: str
    created: str
    storage_uri: str
    message: str = ""
    trials: int


class SweepLine(BaseModel):
    name: str
    state: str
    created: str


class SweepList(BaseModel):
    sweeps: list[SweepLine]


class BestTrial(TrialSummary):
    name: str
    state: str
    objective: Objective


class TrialList(BaseModel):
    sweep: str
    status: str
    objective: Objective
    updated_at: str
    total: int
    trials: list[TrialSummary]


class TrialDetail(TrialRecord):
    log_url: str  # this API's route for the trial's log


class HTTPProblem(Exception):
    def __init__(self, status: int, detail, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


# ============================================================================ metrics
class ServiceMetrics:
    """The service's own series, in its own registry (not the process-global one)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sweep_service_requests", "HTTP requests answered, by route template and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.submitted = Counter("sweep_service_sweeps_submitted", "Sweeps accepted by POST /sweeps", registry=self.registry)
        self.cancelled = Counter("sweep_service_sweeps_cancelled", "Sweeps cancelled by DELETE /sweeps/{name}", registry=self.registry)
        self.backend_errors = Counter(
            "sweep_service_backend_errors", "Backend calls that failed (Kubernetes API, storage), by HTTP status",
            ["status"], registry=self.registry,
        )

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ============================================================================ the app
def create_app(backend: Backend | None = None, token: str | None = None) -> FastAPI:
    """The API over ``backend`` (default: from the environment), guarded by ``token``
    (default: $SWEEP_SERVICE_TOKEN). Raises ServiceConfigError when there is no token."""
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise ServiceConfigError(
            f"no API token: set {TOKEN_ENV} (the Helm chart takes it from a Secret). "
            "The service refuses to run unauthenticated."
        )
    backend = backend if backend is not None else backend_from_env()
    metrics = ServiceMetrics()
    app = FastAPI(title="sweep-service", version="0.1.0", redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.backend, app.state.metrics = backend, metrics
    expected = token.encode()

    def require_token(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPProblem(
                401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                "(sweepctl reads it from SWEEPCTL_TOKEN or ~/.config/sweepctl/config.yaml)",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(request.method, getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.exception_handler(HTTPProblem)
    async def problem(_request, err: HTTPProblem):
        return JSONResponse({"detail": err.detail}, err.status, headers=err.headers)

    @app.exception_handler(BackendError)
    async def backend_error(_request, err: BackendError):
        if err.status >= 500:  # 404/409 are answers, not failures of the backend
            metrics.backend_errors.labels(str(err.status)).inc()
        return JSONResponse({"detail": err.message}, err.status)

    @app.exception_handler(UserError)
    async def user_error(_request, err: UserError):  # e.g. a spec the cluster cannot run
        return JSONResponse({"detail": _spec_problem(str(err))}, 422)

    @app.exception_handler(storage.StorageError)
    async def storage_error(_request, err: storage.StorageError):
        metrics.backend_errors.labels("503").inc()
        return JSONResponse({"detail": f"storage unavailable: {err}"}, 503)

    @app.exception_handler(Exception)
    async def unexpected(_request, err: Exception):
        log.exception("unexpected error")  # the traceback goes to the service log, not the client
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, 500)

    guarded = [Depends(require_token)]

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/sweeps", status_code=201, dependencies=guarded, response_model=SweepCreated)
    async def submit(
        request: Request,
        overrides: list[str] = Query(default=[], alias="set", description="key.path=value, like --set"),
    ):
        text = await _spec_text(request)
        info, spec = await run_in_threadpool(_submit, backend, text, overrides)
        metrics.submitted.inc()
        return {**info.to_dict(), "trials": num_trials(spec)}

    @app.get("/sweeps", dependencies=guarded, response_model=SweepList)
    def list_sweeps():
        return {"sweeps": [{"name": s.name, "state": s.state, "created": s.created} for s in backend.list()]}

    @app.get("/sweeps/{name}", dependencies=guarded, response_model=SweepStatus)
    def status(name: str):
        info = backend.get(name)
        body = info.to_dict()
        try:
            index = SweepStore(info.storage_uri, name).read_index()
            body["progress"] = progress(index)
        except (storage.StorageError, OSError, ValueError, RecordError) as err:
            # The backend's state is still worth answering with; say why progress is missing.
            body["progress"], body["storage_error"] = None, str(err)
        return body

    @app.delete("/sweeps/{name}", dependencies=guarded, response_model=SweepStatus)
    def cancel(name: str):
        info = backend.cancel(name)
        metrics.cancelled.inc()
        return info.to_dict()

    @app.get("/sweeps/{name}/best", dependencies=guarded, response_model=BestTrial)
    def best(name: str):
        info, index = _index(backend, name)
        if index is None or index.best is None:
            raise HTTPProblem(
                404, f"sweep '{name}' has no best trial yet: no trial has reported its objective "
                f"(state: {info.state}); try again once a trial finished an epoch",
            )
        return {"name": name, "state": info.state, "objective": index.objective, **index.best.model_dump()}

    @app.get("/sweeps/{name}/logs", dependencies=guarded, response_class=PlainTextResponse)
    def logs(name: str, tail: int = Query(default=0, ge=0, description="last N lines only (0: all)")):
        return PlainTextResponse(_tail(backend.logs(name), tail))

    @app.get("/sweeps/{name}/trials", dependencies=guarded, response_model=TrialList)
    def trials(
        name: str,
        sort: str = Query(default="objective", description="objective (best first), val_acc, val_loss, train_acc, "
                          "train_loss, epochs, seconds or trial"),
        status: str | None = Query(default=None, description="only trials in this state: " + ", ".join(TRIAL_STATES)),
    ):
        if status is not None and status not in TRIAL_STATES:
            raise HTTPProblem(422, f"status must be one of {', '.join(TRIAL_STATES)}, got {status!r}")
        info, index = _index(backend, name)
        if index is None:
            raise HTTPProblem(404, f"sweep '{name}' has no trials yet (state: {info.state}); its driver writes "
                              "the record once it starts")
        return trials_body(index, sort=sort, status=status)

    @app.get("/sweeps/{name}/trials/{trial_id}", dependencies=guarded, response_model=TrialDetail)
    def trial(name: str, trial_id: str):
        info, store = backend.get(name), None
        store = SweepStore(info.storage_uri, name)
        record = _read(lambda: store.read_trial(trial_id))
        if record is None:
            raise HTTPProblem(404, f"no trial {trial_id!r} in sweep '{name}'; GET /sweeps/{name}/trials lists them")
        return {**record.model_dump(), "log_url": f"/sweeps/{name}/trials/{trial_id}/logs"}

    @app.get("/sweeps/{name}/trials/{trial_id}/logs", dependencies=guarded, response_class=PlainTextResponse)
    def trial_logs(name: str, trial_id: str, tail: int = Query(default=0, ge=0, description="last N lines only (0: all)")):
        info = backend.get(name)
        store = SweepStore(info.storage_uri, name)
        text = _read(lambda: store.read_trial_log(trial_id))
        if text is None:
            raise HTTPProblem(404, f"no log for trial {trial_id!r} in sweep '{name}' yet (looked in "
                              f"{store.trial_log_uri(trial_id)}): a trial writes it once it starts")
        return PlainTextResponse(_tail(text, tail))

    return app


def _tail(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:]) if lines else text


def _read(call):
    """A record read; an unreadable record or a bad trial id is the client's 4xx, not a 500."""
    try:
        return call()
    except RecordError as err:
        raise HTTPProblem(422 if "not a trial id" in str(err) else 500, str(err)) from None


def _index(backend: Backend, name: str) -> tuple[SweepInfo, SweepIndex | None]:
    info = backend.get(name)
    return info, _read(lambda: SweepStore(info.storage_uri, name).read_index())


async def _spec_text(request: Request) -> str:
    body = await request.body()
    if len(body) > MAX_SPEC_BYTES:
        raise HTTPProblem(413, f"spec too large: {len(body)} bytes (at most {MAX_SPEC_BYTES})")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HTTPProblem(400, "the spec must be UTF-8 text") from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise HTTPProblem(422, _spec_problem(f"<request>: not valid JSON: {err.msg} (line {err.lineno})")) from None
        # JSON is YAML, so the same loader reports lines; tabs (only ever whitespace outside JSON
        # strings) are the one thing YAML refuses there.
        return text.replace("\t", " ")
    if content_type not in YAML_TYPES:
        raise HTTPProblem(415, f"unsupported Content-Type {content_type!r}: send application/yaml or application/json")
    return text


def _spec_problem(message: str, errors: list | None = None) -> dict:
    return {"message": message, "errors": errors if errors is not None else [message]}


def _submit(backend: Backend, text: str, overrides: list[str]):
    try:
        spec = parse_spec(text, source="<request>", overrides=overrides)
    except SpecError as err:
        errors = [{"path": p.path, "line": p.line, "message": p.message, "text": str(p)} for p in err.problems]
        raise HTTPProblem(422, _spec_problem(str(err), errors)) from None
    try:
        existing = backend.get(spec.name)
    except BackendError as err:
        if err.status != 404:
            raise
        existing = None
    resumable = ("failed", "cancelled") if getattr(backend, "RESUMES_ON_RESUBMIT", False) else ()
    if existing is not None and existing.state in resumable:
        return backend.submit(spec, text), spec  # the backend resumes it (same spec) or refuses (409)
    if existing is not None:
        again = " (resubmitting a failed or cancelled sweep resumes it)" if resumable else ""
        raise HTTPProblem(
            409, f"sweep '{spec.name}' already exists (state: {existing.state}); nothing was changed. "
            f"Submit it under another name (--set name=NEW-NAME){again}",
        )
    store = SweepStore(backend.storage_uri(spec), spec.name)
    if storage.exists(store.spec_uri):
        raise HTTPProblem(
            409, f"sweep '{spec.name}' already has results in {store.uri}; "
            "nothing was changed. Submit it under another name (--set name=NEW-NAME)",
        )
    return backend.submit(spec, text), spec


def progress(index: SweepIndex | None) -> dict | None:
    """The part of the index a status line needs (the per-trial lines: GET /sweeps/{name}/trials)."""
    if index is None:
        return None
    return {**index.model_dump(include=set(Progress.model_fields) - {"best"}), "best": index.best}


# ============================================================================ configuration
def backend_from_env() -> Backend:
    kind = os.environ.get(BACKEND_ENV, "local").strip().lower()
    if kind == "local":
        from service.control.backends import LocalBackend

        workdir = os.environ.get(WORKDIR_ENV) or Path.home() / ".cache" / "sweep-service" / "local"
        return LocalBackend(workdir)
    if kind == "kubernetes":
        from service.control.backends import KubernetesBackend
        from service.control.rayjob import load_render_options

        config = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        if not Path(config).is_file():
            raise ServiceConfigError(
                f"no service configuration at {config}: set {CONFIG_ENV} to the RenderOptions YAML "
                "(the Helm chart mounts it from a ConfigMap)"
            )
        backend = KubernetesBackend(current_namespace(), load_render_options(config))
        try:
            backend.connect()  # a pod without credentials should fail at start, not on the first request
        except BackendError as err:
            raise ServiceConfigError(err.message) from None
        return backend
    raise ServiceConfigError(f"{BACKEND_ENV} must be 'kubernetes' or 'local', got {kind!r}")


def current_namespace() -> str:
    explicit = os.environ.get(NAMESPACE_ENV, "").strip()
    if explicit:
        return explicit
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweep-service",
        description=f"The sweep service API. Token from ${TOKEN_ENV}; backend from ${BACKEND_ENV} "
        f"(kubernetes | local); Kubernetes settings from ${CONFIG_ENV} (default {DEFAULT_CONFIG}).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    args = parser.parse_args(argv)
    try:
        app = create_app()
    except (UserError, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
