"""Where the service runs sweeps: a Kubernetes namespace (RayJobs) or this machine (subprocesses).

Both answer the same five calls (``Backend``) with ``SweepInfo`` records and raise ``BackendError``
carrying the HTTP status the API should answer with, so the API never guesses what went wrong.
States: pending | running | succeeded | failed | cancelled (| unknown when a backend cannot tell).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import yaml

from service.core.record import SweepStore, list_sweeps
from service.core import storage
from service.core.spec import SweepSpec

log = logging.getLogger(__name__)

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


# ============================================================================ sweep names
@functools.cache
def name_rule() -> dict:
    """The spec's own rule for a sweep name (service/core/spec.py owns it), as JSON Schema:
    ``{"type": "string", "maxLength": ..., "pattern": ...}``. Every name from a URL is held to it."""
    schema = SweepSpec.model_json_schema()["properties"]["name"]
    return {"type": "string", "maxLength": schema["maxLength"], "pattern": schema["pattern"]}


def valid_name(name: object) -> bool:
    """Whether ``name`` could be a sweep's name: a DNS-1123 label within the spec's length limit.
    Such a name is one path part, never ``..``, ``/`` or absolute."""
    rule = name_rule()
    return isinstance(name, str) and len(name) <= rule["maxLength"] and re.fullmatch(rule["pattern"], name) is not None


def name_problem(name: str) -> str:
    rule = name_rule()
    shown = name if len(name) <= 80 else name[:80] + "..."
    return (f"{shown!r} is not a sweep name: sweep names are DNS-1123 labels (lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit) of at most {rule['maxLength']} characters")


@dataclass
class SweepInfo:
    name: str
    state: str
    created: str  # ISO 8601, UTC
    storage_uri: str  # the storage root holding the sweep (<storage_uri>/<name>/, service/core/record.py)
    message: str = ""  # why the backend says so, when it has more to say (e.g. a failure reason)
    owner: str | None = None  # the user who submitted it (None: submitted before the service had users)

    def to_dict(self) -> dict:
        return asdict(self)


class BackendError(Exception):
    """A backend refused or failed; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Backend(Protocol):
    def storage_uri(self, spec: SweepSpec) -> str:
        """The storage root this backend's run of ``spec`` writes to."""

    def submit(self, spec: SweepSpec, source_yaml: str, owner: str | None = None) -> SweepInfo:
        """Start ``spec``, recorded as ``owner``'s (the API's authenticated user)."""

    def get(self, name: str) -> SweepInfo: ...

    def list(self) -> list[SweepInfo]: ...

    def cancel(self, name: str) -> SweepInfo: ...

    def logs(self, name: str) -> str: ...


def not_found(name: str, where: str) -> BackendError:
    if not valid_name(name):
        return BackendError(404, f"no such sweep: {name_problem(name)}")
    return BackendError(404, f"no sweep '{name}' {where}; `sweepctl list` shows the sweeps there")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ============================================================================ local
class LocalBackend:
    """Development backend: each sweep is a ``sweepctl run SPEC --resume`` subprocess.

    A subprocess keeps torch and Ray out of the service process and lets cancel end the whole
    embedded Ray (its own process group). Per sweep, ``<workdir>/<name>/`` holds ``spec.yaml``
    (resolved, storage made absolute), ``process.log`` (stdout+stderr), ``sweep.json`` (pid, its
    start time, the process token, owner, created), then ``exit_code`` and/or ``cancelled``: enough
    to answer after the process ended or the service restarted.

    Confinement: a name is a DNS-1123 label (the spec's rule) before it becomes a path, the sweep's
    directory must resolve to a direct child of the workdir (no symlink out), and the files in it
    are read without following symlinks and replaced atomically (a planted link is not written
    through). Anything else is 404. A process is signalled only when it is provably the one this
    backend started: its pid, its start time (/proc/PID/stat field 22) and the random token handed
    to it in its environment (/proc/PID/environ) all match sweep.json (``ProcessIdentity``).
    """

    LOG = "process.log"
    RESUMES_ON_RESUBMIT = True  # submitting a failed or cancelled sweep's spec again resumes it
    TOKEN_ENV = "SWEEP_SERVICE_PROCESS_TOKEN"  # SWEEP_SERVICE_*: never forwarded on to the Ray workers

    def __init__(self, workdir: str | Path, grace_seconds: float = 45.0):
        self.workdir = Path(workdir).expanduser().resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grace_seconds = grace_seconds  # SIGTERM → SIGKILL: > the driver's own 30 s (StopRequest.GRACE_SECONDS)
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}

    def storage_uri(self, spec: SweepSpec) -> str:
        # Absolute, so the subprocess and the service agree whatever their working directories.
        return storage.normalize(spec.storage.uri)

    def submit(self, spec: SweepSpec, source_yaml: str, owner: str | None = None) -> SweepInfo:
        home = self._path(spec.name)
        resolved = spec.model_dump(mode="json")
        resolved["storage"]["uri"] = self.storage_uri(spec)
        with self._lock:
            try:
                home.mkdir()
            except FileExistsError:
                # a failed or cancelled sweep continues, still its first submitter's
                owner = self._may_resume(spec.name, home, resolved).get("owner", owner)
            storage.write_text_atomic(home / "spec.yaml", yaml.safe_dump(resolved, sort_keys=False))
            token = secrets.token_hex(16)
            command = [sys.executable, "-m", "service.cli", "run", str(home / "spec.yaml"), "--resume"]
            # Its own session: cancel signals the driver and the Ray processes it started, together.
            # The service's own settings (its API token above all) stay out of the sweep: the driver
            # forwards SWEEP_* variables to every Ray worker. The process token proves later that a
            # pid is still this sweep's process (pids are reused).
            env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_SERVICE_")}
            env[self.TOKEN_ENV] = token
            process = self._start(command, home / self.LOG, env)
            info = {"name": spec.name, "pid": process.pid, "start_time": _start_time(process.pid),
                    "process_token": token, "owner": owner, "created": _now(), "storage_uri": self.storage_uri(spec)}
            storage.write_text_atomic(home / "sweep.json", json.dumps(info))
            self._processes[spec.name] = process
        threading.Thread(target=self._record_exit, args=(home, process), daemon=True).start()
        return self.get(spec.name)

    def _start(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        """The sweep's process, its output into ``log_path`` (tests replace the command, not this)."""
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            return subprocess.Popen(command, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            os.close(fd)

    def _may_resume(self, name: str, home: Path, resolved: dict) -> dict:
        """Resubmitting a failed or cancelled sweep with its spec resumes it (finished trials are
        kept; `sweepctl run --resume` continues the stored sweep); anything else is a conflict.
        Returns the sweep's record (sweep.json)."""
        if not (home / "sweep.json").is_file():
            raise BackendError(409, f"sweep '{name}' already exists (local backend, {home})")
        state = self.get(name).state
        if state not in ("failed", "cancelled"):
            raise BackendError(409, f"sweep '{name}' already exists and is {state} (local backend, {home})")
        if yaml.safe_load(_read_text(home / "spec.yaml")) != resolved:
            raise BackendError(409, f"sweep '{name}' ({state}) was submitted with another spec: resubmit that "
                                    f"spec to resume it, or submit this one under another name")
        for marker in ("cancelled", "exit_code"):
            (home / marker).unlink(missing_ok=True)
        return self._record(home)

    def _record_exit(self, home: Path, process: subprocess.Popen) -> None:
        code = process.wait()
        storage.write_text_atomic(home / "exit_code", str(code))

    def _path(self, name: str) -> Path:
        """``<workdir>/<name>``, only for a valid name that stays a direct child of the workdir."""
        if not valid_name(name):
            raise not_found(name, f"in {self.workdir}")
        home = self.workdir / name
        if home.is_symlink() or home.resolve().parent != self.workdir:
            raise not_found(name, f"in {self.workdir}")  # a link out of the workdir is no sweep of ours
        return home

    def _home(self, name: str) -> Path:
        home = self._path(name)
        if not (home / "sweep.json").is_file() or (home / "sweep.json").is_symlink():
            raise not_found(name, f"in {self.workdir}")
        return home

    def _record(self, home: Path) -> dict:
        try:
            info = json.loads(_read_text(home / "sweep.json"))
        except (OSError, ValueError) as err:
            raise BackendError(500, f"the local backend's record {home / 'sweep.json'} is unreadable: {err}") from None
        if not isinstance(info, dict):
            raise BackendError(500, f"the local backend's record {home / 'sweep.json'} is not a JSON object")
        return info

    def get(self, name: str) -> SweepInfo:
        home = self._home(name)
        info = self._record(home)
        state, message = self._state(home, info, name)
        return SweepInfo(name, state, info.get("created", ""), info.get("storage_uri", ""), message, info.get("owner"))

    def _state(self, home: Path, info: dict, name: str) -> tuple[str, str]:
        if _exists(home / "cancelled"):
            return "cancelled", ""
        code_text = _read_text_if_exists(home / "exit_code")
        if code_text is not None:
            try:
                code = int(code_text)
            except ValueError:
                return "failed", f"sweepctl run ended; its exit code is unreadable ({code_text[:40]!r})"
            if code == 0:
                return "succeeded", ""
            return "failed", f"sweepctl run exited with code {code}; see `sweepctl logs {name}`"
        process = self._processes.get(name)
        if process is not None:
            code = process.returncode  # set by _record_exit's wait(); poll() would race with it
            if code is None:
                return "running", ""
            return ("succeeded", "") if code == 0 else ("failed", f"sweepctl run exited with code {code}")
        if ProcessIdentity.of(info).alive():
            return "running", ""
        # Started by an earlier service process that is gone: only storage can tell how it ended.
        index = SweepStore(info.get("storage_uri", ""), name).read_index()
        if index is not None and index.status == "finished":
            return "succeeded", ""
        return "failed", "the sweep process ended while the service was not watching it"

    def list(self) -> list[SweepInfo]:
        names = sorted(p.parent.name for p in self.workdir.glob("*/sweep.json") if valid_name(p.parent.name))
        found = []
        for name in names:
            try:
                found.append(self.get(name))
            except BackendError as err:
                if err.status != 404:  # e.g. a link out of the workdir: not listed
                    raise
        return found

    def cancel(self, name: str) -> SweepInfo:
        home = self._home(name)
        current = self.get(name)
        if current.state in TERMINAL_STATES:
            raise BackendError(409, f"sweep '{name}' already {current.state}; nothing to cancel")
        identity = ProcessIdentity.of(self._record(home))
        if not identity.alive():
            raise BackendError(409, f"sweep '{name}' is {current.state} but its process (pid {identity.pid}) cannot "
                                    "be proven to be the one this service started (its start time or token differ); "
                                    "nothing was signalled")
        storage.write_text_atomic(home / "cancelled", _now())
        store = SweepStore(current.storage_uri, name)
        try:  # the driver reads it when SIGTERM stops it, and records "cancelled"
            store.request_cancel(by="the sweep service (local backend)")
        except storage.StorageError:
            pass  # the driver then records "interrupted"; the service still answers cancelled
        # SIGTERM to the driver alone, as Kubernetes sends it: the driver stops its trials, records
        # the cancel and shuts its Ray down. Its Ray processes signalled too would die under it
        # mid-clean-up. Whatever is left after the grace period is killed, the group together.
        identity.signal(signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, args=(identity, store), daemon=True).start()
        return self.get(name)

    def _kill_after_grace(self, identity: ProcessIdentity, store: SweepStore) -> None:
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline:
            if not identity.group():
                return
            time.sleep(0.2)
        for member in identity.group():
            member.signal(signal.SIGKILL)
        store.mark_cancelled(by="the sweep service (local backend)")  # killed: it could not say so itself

    def logs(self, name: str) -> str:
        return _read_text(self._home(name) / self.LOG)


# ---------------------------------------------------------------------------- the workdir's files
def _read_text(path: Path) -> str:
    """A file's text, never through a symlink (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")


def _read_text_if_exists(path: Path) -> str | None:
    try:
        return _read_text(path)
    except FileNotFoundError:
        return None


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


# ---------------------------------------------------------------------------- process identity
def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from field 3 (state) on; the command name (field 2) may hold anything."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    fields = _proc_stat(pid)
    try:
        return int(fields[22 - 3]) if fields else None
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as this backend started it: pid, start time (clock ticks since boot) and the token
    in its environment. ``alive()`` is true only while all three match the running process."""

    pid: int
    start_time: int
    token: str

    @classmethod
    def of(cls, info: dict) -> ProcessIdentity:
        pid, start, token = info.get("pid"), info.get("start_time"), info.get("process_token")
        valid = (isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 and isinstance(start, int)
                 and isinstance(token, str) and len(token) >= 32)
        # A record without all three (forged, or from an older service) names no process of ours.
        return cls(pid, start, token) if valid else cls(0, -1, "")

    def alive(self) -> bool:
        if self.pid <= 1 or not self.token:
            return False
        fields = _proc_stat(self.pid)
        if not fields or fields[0] == "Z" or _start_time(self.pid) != self.start_time:
            return False  # gone, a zombie, or another process under a reused pid
        return self._has_token(self.pid)

    def _has_token(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # not ours to read: not ours to signal either
            return False
        return f"{LocalBackend.TOKEN_ENV}={self.token}".encode() in environ

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if (and only if) the process is still this one. With a pidfd (Linux 5.3+)
        the check and the signal reach the same process even if the pid is reused in between."""
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            fd = None
        try:
            if not self.alive():
                return False
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False
        finally:
            if fd is not None:
                os.close(fd)

    def group(self) -> list[ProcessIdentity]:
        """The live processes of this process's group (its session: the driver and its Ray) that
        carry the same token and started no earlier: each one provably ours."""
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = _proc_stat(pid)
            try:
                in_group = fields is not None and fields[0] != "Z" and int(fields[5 - 3]) == self.pid
                started = int(fields[22 - 3]) if in_group else -1
            except (IndexError, ValueError):
                continue
            if in_group and started >= self.start_time and self._has_token(pid):
                members.append(ProcessIdentity(pid, started, self.token))
        return members


# ============================================================================ kubernetes
RAYJOB = {"group": "ray.io", "version": "v1", "plural": "rayjobs"}
MANAGED_BY = "app.kubernetes.io/managed-by=sweep-service"
# Who submitted the sweep: an annotation (any user name fits, unlike a label value).
OWNER_ANNOTATION = "sweep-service/owner"


class KubernetesBackend:
    """Sweeps as KubeRay RayJobs in one namespace, through the official ``kubernetes`` client.

    The client is configured lazily (in-cluster service account, else kubeconfig), so importing
    this module costs nothing. Every Kubernetes API error becomes a ``BackendError`` that keeps the
    API server's reason and message; nothing is swallowed.
    """

    def __init__(self, namespace: str, options, api_client=None):
        self.namespace = namespace
        self.options = options  # service.control.rayjob.RenderOptions
        self._api_client = api_client
        self._custom = None

    # ---------------------------------------------------------------------- client
    def connect(self) -> None:
        """Load the cluster credentials now (in-cluster, else kubeconfig); BackendError without any."""
        self._api()

    def _api(self):
        if self._custom is None:
            from kubernetes import client

            self._custom = client.CustomObjectsApi(self._api_client or _configured_api_client())
        return self._custom

    def _call(self, action: str, sweep: str, method: str, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return getattr(self._api(), method)(**RAYJOB, namespace=self.namespace, **kwargs)
        except ApiException as err:
            raise self._api_error(err, action, sweep) from None
        except (HTTPError, OSError) as err:
            host = self._api().api_client.configuration.host
            raise BackendError(503, f"cannot reach the Kubernetes API server at {host} to {action}: {err}") from None

    def _api_error(self, err, action: str, name: str) -> BackendError:
        reason, message = _status_reason_message(err)
        said = f"{err.status} {reason}: {message}"
        if err.status == 404 and action != "create the RayJob":
            return not_found(name, f"in namespace {self.namespace} (Kubernetes API: {said})")
        if err.status == 409:
            return BackendError(409, f"sweep '{name}' already exists in namespace {self.namespace} (Kubernetes API: {said})")
        hint = {
            401: "; the service's Kubernetes credentials were refused",
            403: f"; the service account needs RayJob permissions in namespace {self.namespace} (the Helm chart's Role)",
            404: "; is the KubeRay operator (the ray.io/v1 RayJob CRD) installed?",
            422: "; the RayJob does not match the cluster's RayJob CRD (KubeRay version?)",
        }.get(err.status, "")
        status = 503 if err.status == 503 else 502  # the service works; what it depends on does not
        return BackendError(status, f"the Kubernetes API refused to {action} for sweep '{name}': {said}{hint}")

    # ---------------------------------------------------------------------- backend calls
    def storage_uri(self, spec: SweepSpec) -> str:
        from service.control.rayjob import cluster_spec  # the renderer's rule: default local storage → the service's

        return cluster_spec(spec, self.options).storage.uri

    def submit(self, spec: SweepSpec, source_yaml: str, owner: str | None = None) -> SweepInfo:
        from service.control.rayjob import render_rayjob

        rayjob = render_rayjob(spec, self.options, source_yaml=source_yaml)
        if owner is not None:
            rayjob["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = owner
        created = self._call("create the RayJob", spec.name, "create_namespaced_custom_object", body=rayjob)
        return self._info(created)

    def get(self, name: str) -> SweepInfo:
        if not valid_name(name):  # never sent to the API server as part of a URL
            raise not_found(name, f"in namespace {self.namespace}")
        try:
            return self._info(self._call("read the RayJob", name, "get_namespaced_custom_object", name=name))
        except BackendError as err:
            if err.status != 404:
                raise
            gone = self._from_storage(name)
            if gone is None:
                raise
            return gone

    def _from_storage(self, name: str) -> SweepInfo | None:
        """A sweep whose RayJob is gone (ttlSecondsAfterFinished, or cancelled) but whose results remain."""
        index = SweepStore(self.options.storage_uri, name).read_index()
        if index is None:
            return None
        state = {"finished": "succeeded", "cancelled": "cancelled", "failed": "failed"}.get(index.status, "unknown")
        return SweepInfo(
            name, state, index.started_at, self.options.storage_uri,
            index.stop_reason or "its RayJob is gone (removed after it finished, or cancelled); progress is from storage",
        )

    def list(self) -> list[SweepInfo]:
        found = self._call("list RayJobs", "*", "list_namespaced_custom_object", label_selector=MANAGED_BY)
        return sorted((self._info(item) for item in found.get("items", [])), key=lambda s: s.name)

    def cancel(self, name: str) -> SweepInfo:
        current = self.get(name)
        if current.state in TERMINAL_STATES:
            raise BackendError(409, f"sweep '{name}' already {current.state}; nothing to cancel")
        # The driver reads it when the pod's SIGTERM stops it, and records "cancelled".
        try:
            SweepStore(current.storage_uri, name).request_cancel(by="the sweep service")
        except storage.StorageError as err:  # the driver then records "interrupted"; cancel anyway
            log.warning("could not record the cancel of sweep %s in storage: %s", name, err)
        # Deleting the RayJob makes KubeRay delete its Ray cluster; results stay in storage.
        self._call("delete the RayJob", name, "delete_namespaced_custom_object", name=name)
        return SweepInfo(name, "cancelled", current.created, current.storage_uri, "RayJob deleted", current.owner)

    def logs(self, name: str) -> str:
        info = self.get(name)
        store = SweepStore(info.storage_uri, name)
        text = store.read_driver_log()
        if not text:
            raise BackendError(
                404, f"no driver log for sweep '{name}' yet (state: {info.state}; looked in {store.driver_log_uri()}): "
                "the driver writes it once the RayJob's head pod runs",
            )
        return text

    def _info(self, rayjob: dict) -> SweepInfo:
        metadata = rayjob.get("metadata", {})
        state, message = rayjob_state(rayjob.get("status") or {})
        storage_uri = _embedded_storage_uri(rayjob) or self.options.storage_uri
        owner = (metadata.get("annotations") or {}).get(OWNER_ANNOTATION)
        return SweepInfo(metadata.get("name", ""), state, metadata.get("creationTimestamp", ""), storage_uri, message,
                         owner if isinstance(owner, str) else None)


class StorageBackend:
    """The sweeps in one storage root, read-only: what ``sweepctl ui`` serves over local or S3
    storage with no service, Ray or Kubernetes running. States come from each sweep's index
    (running | finished | interrupted | failed | cancelled, as the driver recorded them)."""

    read_only = True

    def __init__(self, storage_uri: str):
        self.storage_uri_root = storage.normalize(storage_uri)

    def storage_uri(self, spec: SweepSpec) -> str:
        return self.storage_uri_root

    def submit(self, spec: SweepSpec, source_yaml: str, owner: str | None = None) -> SweepInfo:
        raise BackendError(405, "this server only shows the sweeps in storage (sweepctl ui): submit with "
                                "`sweepctl run SPEC` or `sweepctl submit SPEC --server URL`")

    def get(self, name: str) -> SweepInfo:
        if not valid_name(name):
            raise not_found(name, f"in {self.storage_uri_root}")
        index = SweepStore(self.storage_uri_root, name).read_index()
        if index is None:
            raise not_found(name, f"in {self.storage_uri_root}")
        return SweepInfo(name, index.status, index.started_at, self.storage_uri_root, index.stop_reason or "")

    def list(self) -> list[SweepInfo]:
        found = []
        for name in list_sweeps(self.storage_uri_root):
            try:
                found.append(self.get(name))
            except BackendError:
                continue  # removed between the listing and the read
        return found

    def cancel(self, name: str) -> SweepInfo:
        self.get(name)
        raise BackendError(405, f"this server only shows the sweeps in storage (sweepctl ui): stop sweep '{name}' "
                                "where its driver runs (Ctrl-C, or `sweepctl cancel NAME --server URL`)")

    def logs(self, name: str) -> str:
        self.get(name)
        text = SweepStore(self.storage_uri_root, name).read_driver_log()
        if not text:
            raise BackendError(404, f"no driver log for sweep '{name}' in {self.storage_uri_root}")
        return text


def rayjob_state(status: dict) -> tuple[str, str]:
    """KubeRay's RayJob status (jobDeploymentStatus + the Ray job's jobStatus) → (state, message)."""
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    message = status.get("message") or status.get("reason") or ""
    if job == "SUCCEEDED":
        return "succeeded", message
    if job == "FAILED" or deployment in ("Failed", "ValidationFailed"):
        return "failed", message or f"RayJob {deployment or 'failed'}"
    if job == "STOPPED" or deployment in ("Suspending", "Suspended"):
        return "cancelled", message
    if deployment == "Retrying":
        failed = status.get("failed", 0)
        return "pending", f"retrying after {failed} failed attempt(s); the sweep resumes from storage"
    if deployment == "Running" and job == "RUNNING":
        return "running", message
    if deployment == "Complete":  # complete without a terminal job status: KubeRay could not tell
        return "failed", message or "RayJob complete without a job status"
    return "pending", message  # "", New, Initializing, Waiting, or Running with the job still PENDING


def _embedded_storage_uri(rayjob: dict) -> str | None:
    """storage.uri of the resolved spec the renderer put in the head container's environment."""
    from service.control.rayjob import SPEC_ENV

    try:
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        text = next(e["value"] for e in head.get("env", []) if e.get("name") == SPEC_ENV)
        return yaml.safe_load(text)["storage"]["uri"]
    except (KeyError, IndexError, TypeError, StopIteration, yaml.YAMLError):
        return None  # not rendered by us (or by an older renderer): the service's storage


def _status_reason_message(err) -> tuple[str, str]:
    """The API server's Status object (reason, message), else the HTTP reason and raw body."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return body.get("reason") or err.reason or "", body["message"]
    return err.reason or "", (err.body or "").strip()[:500] or "(no message)"


def _configured_api_client():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:
            raise BackendError(
                503, "no Kubernetes configuration: not running in a cluster (no service account token) "
                f"and no usable kubeconfig (KUBECONFIG or ~/.kube/config): {err}",
            ) from None
    return client.ApiClient()
