"""The sweep service: an HTTP API over a backend (RayJobs in a Kubernetes namespace, or local processes).

    POST   /sweeps              spec as YAML or JSON (+ ?set=key=value, repeatable) → 201 | 409 | 422
    GET    /sweeps              name, state, created of every sweep
    GET    /sweeps/{name}       state from the backend + progress from the sweep's index (+ who cancelled, when)
    DELETE /sweeps/{name}       cancel: trials stop; the sweep stays, listed as cancelled, its name taken
    POST   /sweeps/{name}/resume  a failed or cancelled sweep continues from its storage → 200 | 409
    GET    /sweeps/{name}/data  what deleting its data would remove: prefix, object count, bytes
    DELETE /sweeps/{name}/data?confirm=NAME  remove every object under the sweep's prefix; frees the name
    GET    /sweeps/{name}/best  the best trial so far: config, metrics, checkpoint URI
    GET    /sweeps/{name}/logs  the driver's log (text)
    GET    /sweeps/{name}/trials               every trial: status, config, best metrics (?sort=, ?status=)
    GET    /sweeps/{name}/trials/{id}          one trial: history, checkpoints, exploits, error, log pointer
    GET    /sweeps/{name}/trials/{id}/logs     the trial's stdout/stderr and traceback, every attempt (text)
    GET    /sweeps/{name}/trials/{id}/checkpoint  the trial's checkpoint as a tar, verified as it streams
    GET    /healthz, /metrics   open: probes and Prometheus

Everything else needs ``Authorization: Bearer <token>``: a user's token from the tokens file
($SWEEP_SERVICE_TOKENS_FILE, see ``Users``) or the single admin token $SWEEP_SERVICE_TOKEN. Roles:
viewer reads everything; submitter also submits, cancels, resumes and deletes its own sweeps;
admin does everything. Sweep names from a URL are the spec's DNS-1123 labels (else 422) before they
reach a backend. Specs are validated by the same loader as ``sweepctl validate``, so a bad spec
gets the CLI's messages. Errors always come back as JSON ``{"detail": ...}`` saying what failed;
a Kubernetes API error keeps the API server's own message. ``/openapi.json`` declares every
status each route answers with, and its body.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.core import checkpoint as checkpoint_format
from service.core import preflight, storage
from service.control.backends import RESUMABLE_STATES, Backend, BackendError, SweepInfo, name_rule
from service.core.errors import UserError
from service.core.loading import SpecError, parse_spec
from service.core.record import (
    BETTER, SORT_KEYS, TRIAL_STATES, Objective, RecordError, SweepIndex, SweepStore, TrialRecord, TrialSummary,
    trials_body,
)
from service.core.spec import SweepSpec, num_trials

log = logging.getLogger("sweep-service")

TOKEN_ENV = "SWEEP_SERVICE_TOKEN"
TOKENS_FILE_ENV = "SWEEP_SERVICE_TOKENS_FILE"
BACKEND_ENV = "SWEEP_SERVICE_BACKEND"
NAMESPACE_ENV = "SWEEP_SERVICE_NAMESPACE"
CONFIG_ENV = "SWEEP_SERVICE_CONFIG"
WORKDIR_ENV = "SWEEP_SERVICE_WORKDIR"
SECURE_COOKIES_ENV = "SWEEP_SERVICE_SECURE_COOKIES"  # 1: the session cookie is Secure (the UI behind HTTPS)
DEFAULT_CONFIG = "/etc/sweep-service/config.yaml"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Routes anyone may call: probes, Prometheus, and the API's own description.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/docs", "/openapi.json"})
MAX_SPEC_BYTES = 1 << 20
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain", "")
# Prometheus' text format 0.0.4, which every Prometheus reads (our series names need no escaping).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("viewer", "submitter", "admin")  # each may do what the ones before it may
# What `sweepctl trials --sort` takes without a server too (record.sort_trials): the objective,
# every metric with a direction, epochs, seconds or trial.
SORTS = ("objective", *BETTER, *SORT_KEYS)


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
    owner: str | None = None  # the user who submitted it (None: before the service had users)
    cancelled_by: str | None = None  # a cancelled sweep: who cancelled it ("alice via the sweep service")
    cancelled_at: str | None = None  # and when (ISO 8601, UTC)
    progress: Progress | None = None
    storage_error: str | None = None


class SweepCreated(BaseModel):
    name: str
    state: str
    created: str
    storage_uri: str
    message: str = ""
    owner: str | None = None
    trials: int


class SweepLine(BaseModel):
    name: str
    state: str
    created: str
    owner: str | None = None


class SweepList(BaseModel):
    sweeps: list[SweepLine]


class StoredData(BaseModel):
    """A sweep's objects in storage: what DELETE /sweeps/{name}/data removes (GET: would remove)."""

    name: str
    state: str
    prefix: str  # every object under it, and nothing else, is the sweep's (the separator included)
    objects: int
    bytes: int
    deleted: bool  # False: only counted (GET); True: removed, and the name is free again (DELETE)


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
    objectives: list[Objective] = []  # a multi-objective sweep's, the objective first
    pareto_front: list[str] = []  # its Pareto front (trial ids, ranking order)


class TrialDetail(TrialRecord):
    log_url: str  # this API's route for the trial's log


class Problem(BaseModel):
    """Every refusal but a spec's problems and a request's validation: what failed, in words."""

    detail: str


class SpecProblemLine(BaseModel):
    path: str  # dotted path in the spec ("" for the whole document)
    line: int | None  # its line in the YAML/JSON sent
    message: str
    text: str  # the CLI's line: "path (line N): message"


class SpecProblemDetail(BaseModel):
    message: str  # every problem, as `sweepctl validate` prints them
    errors: list[SpecProblemLine | str]


class SpecProblems(BaseModel):
    """422 of POST /sweeps: the spec's problems, all at once."""

    detail: SpecProblemDetail


class HTTPProblem(Exception):
    def __init__(self, status: int, detail, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


# What each refusal means; the routes' ``responses=`` declare these in /openapi.json.
PROBLEMS = {
    400: "the spec is not UTF-8 text",
    401: "no bearer token, or one the service does not know",
    403: "the user's role does not allow this, or the sweep is another user's",
    404: "no such sweep (or trial, or nothing written there yet)",
    409: "the sweep exists already (or has results in storage); it has ended and cannot be cancelled; it is "
         "running (or succeeded) and cannot be resumed; or it is running and its data cannot be deleted",
    413: "the spec is larger than the service accepts",
    415: "a Content-Type other than YAML or JSON",
    502: "the Kubernetes API refused the call (its message is kept)",
    503: "storage or the Kubernetes API server cannot be reached",
}


def problems(*codes: int) -> dict:
    declared = {code: {"model": Problem, "description": PROBLEMS[code]} for code in codes}
    if 401 in declared:
        declared[401]["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
    return declared


_NAME = name_rule()
SweepName = Annotated[str, PathParam(
    pattern=_NAME["pattern"], max_length=_NAME["maxLength"],
    description=f"the sweep's name: a DNS-1123 label of at most {_NAME['maxLength']} characters, the spec's rule "
                "(anything else is a 422 before any backend or file is touched)",
)]

# A trial id as service/core/record.py's _safe_id takes it (1-128 of [A-Za-z0-9_.-], not "." or
# ".."), written without a lookahead, which not every JSON Schema engine or generator supports.
TRIAL_ID_PATTERN = r"^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,126}|\.\.[A-Za-z0-9_.-]{1,126})$"
TrialId = Annotated[str, PathParam(pattern=TRIAL_ID_PATTERN, description="a trial id, as GET /sweeps/{name}/trials lists them")]


# ============================================================================ users and roles
@dataclass(frozen=True)
class User:
    name: str
    role: str  # viewer | submitter | admin

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class TokenEntry(BaseModel, extra="forbid"):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Literal["viewer", "submitter", "admin"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex of the token")]

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class TokensFile(BaseModel, extra="forbid"):
    users: list[TokenEntry]


class Users:
    """Who a bearer token belongs to: the tokens file (re-read when it changes, e.g. when Kubernetes
    updates the mounted Secret) plus, if set, the single token of old as the user ``admin``.

    The file (YAML or JSON) holds no token, only its sha256::

        users:
          - {name: alice, role: submitter, sha256: <sha256 hex of alice's token>}
          - {name: grafana, role: viewer, sha256: ...}

    Why a plain sha256 and not a salted slow hash (scrypt, pbkdf2): tokens are random (e.g. 32
    bytes from ``secrets.token_urlsafe``), so there is nothing to guess from a dictionary and a
    2^256 preimage search is out of reach; slow hashes exist to protect low-entropy passwords and
    would cost every request milliseconds. Lookup hashes the token presented and compares it with
    every entry with ``hmac.compare_digest``, never stopping at the first match.
    """

    def __init__(self, path: str | Path | None = None, admin_token: str | None = None):
        self.path = Path(path) if path else None
        self._admin = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._lock = threading.Lock()
        self._signature = None
        self._entries: list[tuple[bytes, User]] = []
        if self.path is not None:
            self._signature, self._entries = self._load()  # a bad file stops the service at start

    def _load(self) -> tuple[tuple, list[tuple[bytes, User]]]:
        path = self.path
        try:
            stat = path.stat()
            text = path.read_text()
        except OSError as err:
            raise ServiceConfigError(f"cannot read the tokens file {path} (${TOKENS_FILE_ENV}): {err.strerror}") from None
        import yaml

        try:
            parsed = TokensFile.model_validate(yaml.safe_load(text))
        except yaml.YAMLError as err:
            raise ServiceConfigError(f"the tokens file {path} is not valid YAML: {err}") from None
        except ValidationError as err:
            lines = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<file>'}: {e['msg']}" for e in err.errors())
            raise ServiceConfigError(f"the tokens file {path} is not 'users: [{{name, role, sha256}}, ...]': {lines}") from None
        entries, roles, digests = [], {}, set()
        if self._admin is not None:
            roles["admin"] = "admin"
            digests.add(self._admin.hex())
        for entry in parsed.users:
            if entry.sha256 in digests:
                raise ServiceConfigError(f"the tokens file {path}: the token of user {entry.name!r} is listed twice "
                                         "(or is $SWEEP_SERVICE_TOKEN's): each token names one user")
            if roles.setdefault(entry.name, entry.role) != entry.role:
                raise ServiceConfigError(f"the tokens file {path}: user {entry.name!r} has two roles "
                                         f"({roles[entry.name]}, {entry.role}); a user's tokens share one role")
            digests.add(entry.sha256)
            entries.append((bytes.fromhex(entry.sha256), User(entry.name, entry.role)))
        return (stat.st_mtime_ns, stat.st_ino, stat.st_size), entries

    def _current(self) -> list[tuple[bytes, User]]:
        if self.path is None:
            return self._entries
        with self._lock:
            try:
                stat = self.path.stat()
                signature = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
            except OSError:
                signature = self._signature  # briefly missing mid-update: keep the users we have
            if signature != self._signature:
                try:
                    self._signature, self._entries = self._load()
                    log.info("tokens file %s re-read: %d users", self.path, len({u for _, u in self._entries}))
                except ServiceConfigError as err:
                    self._signature = signature  # said once; the users we had stay until it is fixed
                    log.error("%s; keeping the %d tokens read before", err, len(self._entries))
            return self._entries

    def find(self, token: str) -> User | None:
        return self.find_digest(hashlib.sha256(token.encode()).digest())

    def find_digest(self, digest: bytes) -> User | None:
        """The user whose token has this sha256 (a browser session keeps the digest, not the token)."""
        found = None
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            found = User("admin", "admin")
        for expected, user in self._current():
            if hmac.compare_digest(digest, expected):  # every entry compared: no early exit
                found = found or user
        return found

    def __bool__(self) -> bool:
        return self._admin is not None or self.path is not None


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
        self.resumed = Counter("sweep_service_sweeps_resumed", "Sweeps resumed by POST /sweeps/{name}/resume",
                               registry=self.registry)
        self.deleted = Counter("sweep_service_sweeps_deleted", "Sweeps whose data DELETE /sweeps/{name}/data removed",
                               registry=self.registry)
        self.backend_errors = Counter(
            "sweep_service_backend_errors", "Backend calls that failed (Kubernetes API, storage), by HTTP status",
            ["status"], registry=self.registry,
        )

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ============================================================================ the app
def create_app(backend: Backend | None = None, token: str | None = None,
               tokens_file: str | Path | None = None, *, anonymous: User | None = None,
               secure_cookies: bool | None = None) -> FastAPI:
    """The API and the web pages (service/web/) over ``backend`` (default: from the environment).
    Its users come from ``tokens_file`` (default: $SWEEP_SERVICE_TOKENS_FILE; see ``Users``) and
    ``token`` (default: $SWEEP_SERVICE_TOKEN), the single token of old, which is the user ``admin``.
    Raises ServiceConfigError when there is neither, or the tokens file is unreadable or malformed.
    ``anonymous``: who a request without credentials is (``sweepctl ui`` on 127.0.0.1: a viewer);
    by default nobody, so every route but the open ones needs a token or a browser session.
    ``secure_cookies``: mark the session cookie Secure (served over HTTPS; default
    $SWEEP_SERVICE_SECURE_COOKIES=1)."""
    from service.web.auth import Sessions
    from service.web.pages import add_pages

    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    tokens_file = tokens_file if tokens_file is not None else os.environ.get(TOKENS_FILE_ENV, "")
    if secure_cookies is None:
        secure_cookies = os.environ.get(SECURE_COOKIES_ENV, "") == "1"
    users = Users(str(tokens_file).strip() or None, token.strip() or None)
    if not users and anonymous is None:
        raise ServiceConfigError(
            f"no API token: set {TOKENS_FILE_ENV} to a tokens file (users, roles and token hashes) and/or "
            f"{TOKEN_ENV} to an admin token (the Helm chart takes them from Secrets). "
            "The service refuses to run unauthenticated."
        )
    backend = backend if backend is not None else backend_from_env()
    metrics = ServiceMetrics()
    # No redirect of "/sweeps/" (or "/sweeps/%2F") to "/sweeps": a path that names no route is a 404.
    app = FastAPI(title="sweep-service", version="0.1.0", redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  redirect_slashes=False)
    sessions = Sessions(users)
    app.state.backend, app.state.metrics, app.state.users, app.state.sessions = backend, metrics, users, sessions
    bearer = HTTPBearer(auto_error=False, description="a user's token (the tokens file) or the admin token")

    def authenticated(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> User:
        """A bearer token, else the browser's session cookie (a state-changing request with the
        cookie must also carry the session's CSRF token: X-CSRF-Token), else ``anonymous``."""
        user = users.find(credentials.credentials.strip()) if credentials is not None else None
        if user is None and credentials is None:
            session = sessions.from_request(request)
            if session is not None:
                if request.method not in ("GET", "HEAD") and not session.csrf_ok(request.headers.get("x-csrf-token")):
                    raise HTTPProblem(403, "a request that changes something from a browser session needs the "
                                           "page's CSRF token in the X-CSRF-Token header (reload the page)")
                user = session.user
            elif anonymous is not None:
                user = anonymous
        if user is None:
            raise HTTPProblem(
                401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                "(sweepctl reads it from SWEEPCTL_TOKEN or ~/.config/sweepctl/config.yaml)",
                {"WWW-Authenticate": "Bearer"},
            )
        return user

    def role(minimum: str, doing: str):
        def allowed(user: User = Depends(authenticated)) -> User:
            if not user.may(minimum):
                needs = " or ".join(ROLES[ROLES.index(minimum):])
                raise HTTPProblem(403, f"user '{user.name}' ({user.role}) may not {doing}: that needs the {needs} role")
            return user
        return allowed

    viewer = role("viewer", "read sweeps")
    submitter = role("submitter", "submit, cancel, resume or delete sweeps")

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(request.method, getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.exception_handler(HTTPProblem)
    async def problem(_request, err: HTTPProblem):
        return JSONResponse({"detail": err.detail}, err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        # Starlette's 405 names only the first route of the path that matched; Allow lists them all.
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope["path"]))
        if err.status_code in (204, 304):
            return Response(status_code=err.status_code, headers=headers)
        return JSONResponse({"detail": err.detail}, err.status_code, headers=headers)

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

    guarded = [Depends(viewer)]  # every user may read
    # What every route behind a token may answer besides its own; a backend call may fail (502/503).
    reads = problems(401, 502, 503)
    reads_sweep = problems(401, 404, 502, 503)  # + FastAPI's own 422 (a bad name, a bad query value)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "The service's own series, Prometheus text format 0.0.4 (charset=utf-8)",
        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}})
    def prometheus_metrics():
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    spec_body = {"$ref": "#/components/schemas/SweepSpec"}

    @app.post(
        "/sweeps", status_code=201, response_model=SweepCreated,
        responses={201: {"description": "Submitted (or resumed): the sweep's state, its owner and its trial count",
                         "links": {  # what a just-created sweep answers at once (its results come later: 404 till then)
                             "status": {"operationRef": "#/paths/~1sweeps~1{name}/get",
                                        "parameters": {"name": "$response.body#/name"}},
                             "cancel": {"operationRef": "#/paths/~1sweeps~1{name}/delete",
                                        "parameters": {"name": "$response.body#/name"}}}},
                   **problems(400, 401, 403, 409, 413, 415, 502, 503),
                   422: {"model": SpecProblems, "description": "the spec's problems (the CLI's messages), all at "
                         "once; the JSON Schema cannot say everything the loader checks (cross-field rules)"}},
        openapi_extra={"requestBody": {
            "required": True,
            "description": "the sweep spec, as `sweepctl validate` reads it: YAML (application/yaml, text/yaml; "
                           "also application/x-yaml, text/x-yaml, text/plain) or JSON (application/json). "
                           "Resubmitting a failed or cancelled sweep's spec resumes it (its owner or an admin only).",
            "content": {"application/yaml": {"schema": spec_body}, "text/yaml": {"schema": spec_body},
                        "application/json": {"schema": spec_body}},
        }},
    )
    async def submit(
        request: Request,
        overrides: list[str] = Query(default=[], alias="set", description="key.path=value, like --set"),
        user: User = Depends(submitter),
    ):
        text = await _spec_text(request)
        info, spec = await run_in_threadpool(_submit, backend, text, overrides, user)
        metrics.submitted.inc()
        log.info("user %s (%s) submitted sweep %s", user.name, user.role, info.name)
        return {**info.to_dict(), "trials": num_trials(spec)}

    @app.get("/sweeps", dependencies=guarded, response_model=SweepList, responses=reads)
    def list_sweeps():
        return {"sweeps": [{"name": s.name, "state": s.state, "created": s.created, "owner": s.owner}
                           for s in backend.list()]}

    @app.get("/sweeps/{name}", dependencies=guarded, response_model=SweepStatus, responses=reads_sweep)
    def status(name: SweepName):
        info = backend.get(name)
        body = info.to_dict()
        store = SweepStore(info.storage_uri, name)
        try:
            body["progress"] = progress(store.read_index())
            body.update(_cancelled_by(info))
        except (storage.StorageError, OSError, ValueError, RecordError) as err:
            # The backend's state is still worth answering with; say why progress is missing.
            body["progress"], body["storage_error"] = None, str(err)
        return body

    sweep_link = {"parameters": {"name": "$response.body#/name"}}

    @app.delete("/sweeps/{name}", response_model=SweepStatus,
                responses={200: {"description": "Cancelled: its trials stop; the sweep stays (listed as cancelled, "
                                                "its name taken, its results in storage) and may be resumed",
                                 "links": {"resume": {"operationRef": "#/paths/~1sweeps~1{name}~1resume/post",
                                                      **sweep_link}}},
                           **problems(401, 403, 404, 409, 502, 503)})
    def cancel(name: SweepName, user: User = Depends(submitter)):
        _may_change(user, backend.get(name), "cancel")
        info = backend.cancel(name, by=f"{user.name} via the sweep service")
        metrics.cancelled.inc()
        log.info("user %s (%s) cancelled sweep %s", user.name, user.role, name)
        try:
            return {**info.to_dict(), **_cancelled_by(info)}
        except (storage.StorageError, RecordError):
            return info.to_dict()  # cancelled all the same; GET /sweeps/{name} says why storage is unreadable

    @app.post("/sweeps/{name}/resume", response_model=SweepStatus,
              responses={200: {"description": "Resumed from its storage: finished trials are kept, unfinished ones "
                                              "continue from their last checkpoint; the sweep stays its owner's",
                               "links": {"status": {"operationRef": "#/paths/~1sweeps~1{name}/get", **sweep_link},
                                         "cancel": {"operationRef": "#/paths/~1sweeps~1{name}/delete", **sweep_link}}},
                         **problems(401, 403, 404, 409, 502, 503)})
    def resume(name: SweepName, user: User = Depends(submitter)):
        _may_change(user, backend.get(name), "resume")
        info = backend.resume(name)
        metrics.resumed.inc()
        log.info("user %s (%s) resumed sweep %s", user.name, user.role, name)
        return info.to_dict()

    @app.get("/sweeps/{name}/data", dependencies=guarded, response_model=StoredData, responses=reads_sweep)
    def stored_data(name: SweepName):
        info = backend.get(name)
        return _stored_data(info, SweepStore(info.storage_uri, name).stored_objects(), deleted=False)

    @app.delete("/sweeps/{name}/data", response_model=StoredData, responses=problems(401, 403, 404, 409, 502, 503))
    def delete_data(name: SweepName, user: User = Depends(submitter), confirm: str = Query(
            pattern=_NAME["pattern"], max_length=_NAME["maxLength"],
            description="the sweep's name again: nothing is deleted unless it matches (else 422)")):
        info = backend.get(name)
        _may_change(user, info, "delete")
        if confirm != name:
            raise HTTPProblem(422, [{"loc": ["query", "confirm"], "type": "value_error",
                                     "msg": f"confirm must repeat the sweep's name '{name}'; nothing was deleted"}])
        store = SweepStore(info.storage_uri, name)
        objects = store.stored_objects()
        # The backend refuses a sweep of which anything still runs (409), then storage goes first:
        # a backend that forgot the sweep could no longer show what is left of it.
        backend.forget(name, delete_data=store.delete)
        metrics.deleted.inc()
        log.info("user %s (%s) deleted sweep %s: %d objects under %s", user.name, user.role, name, len(objects), store.prefix)
        return _stored_data(info, objects, deleted=True)

    @app.get("/sweeps/{name}/best", dependencies=guarded, response_model=BestTrial, responses=reads_sweep)
    def best(name: SweepName):
        info, index = _index(backend, name)
        if index is None or index.best is None:
            raise HTTPProblem(
                404, f"sweep '{name}' has no best trial yet: no trial has reported its objective "
                f"(state: {info.state}); try again once a trial finished an epoch",
            )
        return {"name": name, "state": info.state, "objective": index.objective, **index.best.model_dump()}

    text_200 = {200: {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}}

    # response_class=Response: FastAPI would otherwise declare the errors' JSON as text/plain too.
    @app.get("/sweeps/{name}/logs", dependencies=guarded, response_class=Response,
             responses={**text_200, **reads_sweep})
    def logs(name: SweepName, tail: int = Query(default=0, ge=0, description="last N lines only (0: all)")):
        return PlainTextResponse(_tail(backend.logs(name), tail))

    @app.get("/sweeps/{name}/trials", dependencies=guarded, response_model=TrialList, responses=reads_sweep)
    def trials(
        name: SweepName,
        sort: Literal[SORTS] = Query(default="objective", description="objective (best first), a metric (best first: "
                                     + ", ".join(BETTER) + "), epochs, seconds or trial"),
        status: Literal[TRIAL_STATES] = Query(default=None, description="only trials in this state (default: all)"),
    ):
        info, index = _index(backend, name)
        if index is None:
            raise HTTPProblem(404, f"sweep '{name}' has no trials yet (state: {info.state}); its driver writes "
                              "the record once it starts")
        return trials_body(index, sort=sort, status=status)

    @app.get("/sweeps/{name}/trials/{trial_id}", dependencies=guarded, response_model=TrialDetail,
             responses=reads_sweep)
    def trial(name: SweepName, trial_id: TrialId):
        info, store = backend.get(name), None
        store = SweepStore(info.storage_uri, name)
        record = _read(lambda: store.read_trial(trial_id))
        if record is None:
            raise HTTPProblem(404, f"no trial {trial_id!r} in sweep '{name}'; GET /sweeps/{name}/trials lists them")
        return {**record.model_dump(), "log_url": f"/sweeps/{name}/trials/{trial_id}/logs"}

    @app.get("/sweeps/{name}/trials/{trial_id}/logs", dependencies=guarded, response_class=Response,
             responses={**text_200, **reads_sweep})
    def trial_logs(name: SweepName, trial_id: TrialId,
                   tail: int = Query(default=0, ge=0, description="last N lines only (0: all)")):
        info = backend.get(name)
        store = SweepStore(info.storage_uri, name)
        text = _read(lambda: store.read_trial_log(trial_id))
        if text is None:
            raise HTTPProblem(404, f"no log for trial {trial_id!r} in sweep '{name}' yet (looked in "
                              f"{store.trial_log_uri(trial_id)}): a trial writes it once it starts")
        return PlainTextResponse(_tail(text, tail))

    # The checkpoint itself, streamed through the service (not a redirect to a presigned S3 URL):
    # it works alike for local and S3 storage; a checkpoint is several objects, which one redirect
    # cannot carry; users need no route to the S3 endpoint (often inside the cluster) and no S3
    # credentials, only their token; no URL that is itself a credential ends up in shell history or
    # proxy logs; and the service checks every file's sha256 as it sends it (checkpoint.CheckpointTar).
    # The price: the bytes pass through the service, 1 MiB at a time (never a whole file in memory).
    @app.get("/sweeps/{name}/trials/{trial_id}/checkpoint", dependencies=guarded, response_class=Response,
             responses={200: {"description": "the trial's checkpoint directory (its best retained checkpoint, "
                                             "as GET /sweeps/{name}/trials shows it) as an uncompressed tar: "
                                             "checkpoint.json (the sha256 manifest) first, then every file it lists. "
                                             "Each file is checked against the manifest as it streams; on a mismatch "
                                             "the transfer stops short of Content-Length. X-Sweep-Checkpoint: the "
                                             "checkpoint's URI in storage (percent-encoded)",
                              "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
                        **reads_sweep,
                        409: {"model": Problem, "description": "the checkpoint in storage does not match its sha256 "
                                                               "manifest (or lies outside its sweep)"}})
    def trial_checkpoint(name: SweepName, trial_id: TrialId):
        from urllib.parse import quote

        info, index = _index(backend, name)
        trial = index.trial(trial_id) if index is not None else None
        if trial is None:
            raise HTTPProblem(404, f"no trial {trial_id!r} in sweep '{name}'; GET /sweeps/{name}/trials lists them")
        if not trial.checkpoint:
            raise HTTPProblem(404, f"trial {trial_id} of sweep '{name}' has no checkpoint (yet)")
        store = SweepStore(info.storage_uri, name)
        uri = storage.normalize(trial.checkpoint)
        # The record names the checkpoint; the service reads only what lies under the sweep itself,
        # or, for a warm start's copy of an earlier trial, under that sweep when it is in the same storage.
        within = _checkpoint_root(store, trial.copied_from, info.storage_uri)
        if not _under(uri, within):
            raise HTTPProblem(409, f"trial {trial_id}'s checkpoint {uri} is outside sweep '{name}' ({within}); "
                                   "refusing to read it")
        try:
            tar = checkpoint_format.CheckpointTar(uri)
        except checkpoint_format.CheckpointMissing as err:
            raise HTTPProblem(404, f"{err}; pick another trial") from None
        except FileNotFoundError:
            raise HTTPProblem(404, f"checkpoint {uri} was deleted while being read; pick another trial") from None
        except checkpoint_format.CheckpointError as err:
            raise HTTPProblem(409, str(err)) from None

        def stream():
            try:
                yield from tar.chunks()
            except checkpoint_format.CheckpointError as err:
                # Headers are gone: ending the body short of Content-Length is how the client learns.
                log.error("stopped sending sweep %s trial %s's checkpoint: %s", name, trial_id, err)
                raise

        return StreamingResponse(stream(), media_type="application/x-tar", headers={
            "Content-Length": str(tar.size),
            "Content-Disposition": f'attachment; filename="{name}-{trial_id}.tar"',
            "X-Sweep-Checkpoint": quote(uri, safe=":/"),
        })

    def openapi() -> dict:
        """FastAPI's document, plus the spec's JSON Schema that POST /sweeps' body refers to."""
        if app.openapi_schema is None:
            _add_spec_schema(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi
    add_pages(app, backend=backend, sessions=sessions, anonymous=anonymous, secure_cookies=secure_cookies)
    return app


def _may_change(user: User, sweep: SweepInfo, doing: str) -> None:
    """A submitter changes (cancels, resumes) only its own sweeps; an admin any."""
    if user.may("admin") or (sweep.owner is not None and sweep.owner == user.name):
        return
    whose = f"user '{sweep.owner}'" if sweep.owner else "no user (it predates the service's users)"
    raise HTTPProblem(403, f"user '{user.name}' ({user.role}) may not {doing} sweep '{sweep.name}': it was "
                           f"submitted by {whose}; only its submitter or an admin may")


def _cancelled_by(info: SweepInfo) -> dict:
    """Who cancelled a cancelled sweep, and when (its cancel request in storage); {} for any other."""
    request = SweepStore(info.storage_uri, info.name).read_cancel_request() if info.state == "cancelled" else None
    return {} if request is None else {"cancelled_by": request.by, "cancelled_at": request.requested_at}


def _stored_data(info: SweepInfo, objects: dict[str, int], deleted: bool) -> dict:
    prefix = SweepStore(info.storage_uri, info.name).prefix
    return {"name": info.name, "state": info.state, "prefix": prefix, "objects": len(objects),
            "bytes": sum(objects.values()), "deleted": deleted}


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods = set()
    for route in app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return sorted(methods)


def _add_spec_schema(document: dict) -> None:
    schema = SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name, part in {**schema.pop("$defs", {}), "SweepSpec": schema}.items():
        if name in components and components[name] != part:
            raise RuntimeError(f"OpenAPI component {name!r} is both a response model and part of the spec")
        components[name] = part


def _tail(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:]) if lines else text


def _read(call):
    """A record read; a bad trial id is the client's 422 (shaped as a request validation error,
    as /openapi.json declares), an unreadable record the service's 500."""
    try:
        return call()
    except RecordError as err:
        if "not a trial id" in str(err):
            raise HTTPProblem(422, [{"loc": ["path", "trial_id"], "msg": str(err), "type": "value_error"}]) from None
        raise HTTPProblem(500, str(err)) from None


def _index(backend: Backend, name: str) -> tuple[SweepInfo, SweepIndex | None]:
    info = backend.get(name)
    return info, _read(lambda: SweepStore(info.storage_uri, name).read_index())


async def _spec_text(request: Request) -> str:
    # The same limits as a spec file (service/core/loading.py): at most MAX_SPEC_BYTES, refused
    # from the Content-Length before anything is read, and never buffered past the limit when the
    # client sends no length (chunked) or a false one; parse_spec then bounds depth, nodes, aliases.
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_SPEC_BYTES):
        raise HTTPProblem(413, f"spec too large: {declared} bytes (at most {MAX_SPEC_BYTES})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_SPEC_BYTES:
            raise HTTPProblem(413, f"spec too large: more than {MAX_SPEC_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        text = body.decode()
    except UnicodeDecodeError as err:
        line = body.count(b"\n", 0, err.start) + 1
        raise HTTPProblem(400, f"the spec must be UTF-8 text: byte 0x{body[err.start]:02x} at byte offset "
                               f"{err.start} (line {line}) is not") from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise HTTPProblem(422, _spec_problem(f"<request>: not valid JSON: {err.msg} (line {err.lineno})")) from None
        except (RecursionError, ValueError):
            pass  # nested too deep or a number too long: the loader's limits say so, with the line
        # JSON is YAML, so the same loader reports lines; tabs (only ever whitespace outside JSON
        # strings) are the one thing YAML refuses there.
        return text.replace("\t", " ")
    if content_type not in YAML_TYPES:
        raise HTTPProblem(415, f"unsupported Content-Type {content_type!r}: send application/yaml or application/json")
    return text


def _spec_problem(message: str, errors: list | None = None) -> dict:
    return {"message": message, "errors": errors if errors is not None else [message]}


def _spec_error(err: SpecError) -> HTTPProblem:
    errors = [{"path": p.path, "line": p.line, "message": p.message, "text": str(p)} for p in err.problems]
    return HTTPProblem(422, _spec_problem(str(err), errors))


def _submit(backend: Backend, text: str, overrides: list[str], user: User):
    try:
        spec = parse_spec(text, source="<request>", overrides=overrides)
    except SpecError as err:
        raise _spec_error(err) from None
    # A warm start's earlier sweeps are read now, as `sweepctl run` does before Ray starts: a
    # missing or mismatched one is the submitter's 422 now, not a failed driver later.
    warm_start_problems = preflight.warm_start_problems(spec)
    if warm_start_problems:
        raise _spec_error(SpecError("<request>", warm_start_problems))
    try:
        existing = backend.get(spec.name)
    except BackendError as err:
        if err.status != 404:
            raise
        existing = None
    # A taken name is a 409, but for one case: the very spec of a failed or cancelled sweep resumes
    # it (the backend compares it with the one submitted; another spec is a 409). It stays its owner's.
    if existing is not None and existing.state in RESUMABLE_STATES:
        _may_change(user, existing, "resume")
        return backend.resume(spec.name, spec=spec), spec
    if existing is not None:
        raise HTTPProblem(
            409, f"sweep '{spec.name}' already exists (state: {existing.state}); nothing was changed. "
            f"Submit it under another name (--set name=NEW-NAME); once it has ended, `sweepctl delete "
            f"{spec.name} --yes` deletes it and frees the name",
        )
    store = SweepStore(backend.storage_uri(spec), spec.name)
    if storage.exists(store.spec_uri):
        raise HTTPProblem(
            409, f"sweep '{spec.name}' already has results in {store.uri}; "
            "nothing was changed. Submit it under another name (--set name=NEW-NAME)",
        )
    return backend.submit(spec, text, owner=user.name), spec


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
        description=f"The sweep service API. Users from the tokens file ${TOKENS_FILE_ENV} and/or the admin "
        f"token ${TOKEN_ENV}; backend from ${BACKEND_ENV} "
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


def _under(uri: str, root: str) -> bool:
    return uri.startswith(root.rstrip("/") + ("/" if storage.is_s3(uri) else os.sep))


def _checkpoint_root(store: SweepStore, copied_from: str | None, storage_uri: str) -> str:
    """Where a trial's checkpoints may be: its sweep, or the earlier sweep a warm start copied it
    from when that one is in the same storage (service/core/warm_start.py, ``copied_from``)."""
    if copied_from:
        earlier = storage.normalize(copied_from.split("#", 1)[0])
        if _under(earlier, storage.normalize(storage_uri)):
            return earlier
    return store.uri

