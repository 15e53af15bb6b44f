"""Where the service runs sweeps: a Kubernetes namespace (RayJobs) or this machine (subprocesses).

Both answer the same calls (``Backend``) with ``SweepInfo`` records and raise ``BackendError``
carrying the HTTP status the API should answer with, so the API never guesses what went wrong.
States: pending | running | succeeded | failed | cancelled (| unknown when a backend cannot tell).

The lifecycle: a cancel stops the sweep and keeps it (listed, ``cancelled``, its name taken); a
resume continues a failed or cancelled one from its storage (finished trials kept, still its
submitter's); only ``forget`` (after the API deleted its storage) frees the name.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import yaml

from service.core.record import Objective, SweepStore, list_sweeps, new_index, unstarted_cancel_index
from service.core import storage
from service.core.spec import SweepSpec, max_epochs, num_trials, parse_constraint

log = logging.getLogger(__name__)

TERMINAL_STATES = ("succeeded", "failed", "cancelled")
RESUMABLE_STATES = ("failed", "cancelled")  # a succeeded sweep has nothing left to run
SERVICE = "the sweep service"  # who cancels when the API names no user


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

    def cancel(self, name: str, by: str = SERVICE) -> SweepInfo:
        """Stop the sweep (409 if it already ended); it stays, ``cancelled`` by ``by``."""

    def resume(self, name: str, spec: SweepSpec | None = None) -> SweepInfo:
        """Continue a failed or cancelled sweep from its storage (409 otherwise), still its owner's.
        ``spec`` (a resubmission): only if it is the spec the sweep was submitted with (else 409)."""

    def forget(self, name: str, delete_data: Callable[[], None]) -> None:
        """Delete an ended sweep: check that nothing of it runs (409 otherwise, nothing deleted),
        call ``delete_data()`` (its storage: the API's to delete), then drop what the backend keeps
        of it. Its name is free again."""

    def logs(self, name: str) -> str: ...


def not_resumable(name: str, state: str) -> BackendError:
    if state == "succeeded":
        return BackendError(409, f"sweep '{name}' already succeeded; nothing to resume")
    return BackendError(409, f"sweep '{name}' is {state}: only a failed or cancelled sweep resumes "
                             f"(cancel it first: sweepctl cancel {name})")


def still_running(name: str, state: str) -> BackendError:
    return BackendError(409, f"sweep '{name}' is {state}: cancel it first (sweepctl cancel {name}); "
                             "nothing was deleted")


def not_found(name: str, where: str) -> BackendError:
    if not valid_name(name):
        return BackendError(404, f"no such sweep: {name_problem(name)}")
    return BackendError(404, f"no sweep '{name}' {where}; `sweepctl list` shows the sweeps there")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ============================================================================ local
class LocalBackend:
    """Development backend: each sweep is a ``sweepctl run SPEC --resume`` subprocess (a resume:
    ``sweepctl resume NAME --storage URI``).

    A subprocess keeps torch and Ray out of the service process and lets cancel end the whole
    embedded Ray (its own process group). Per sweep, ``<workdir>/<name>/`` holds ``spec.yaml``
    (resolved, storage made absolute), ``process.log`` (stdout+stderr, every run appended),
    ``sweep.json`` (pid, its start time, the process token, owner, created), then ``exit_code``
    and/or ``cancelled``: enough to answer after the process ended or the service restarted.

    Confinement: a name is a DNS-1123 label (the spec's rule) before it becomes a path, the sweep's
    directory must resolve to a direct child of the workdir (no symlink out), and the files in it
    are read without following symlinks and replaced atomically (a planted link is not written
    through). Anything else is 404. A process is signalled only when it is provably the one this
    backend started: its pid, its start time (/proc/PID/stat field 22) and the random token handed
    to it in its environment (/proc/PID/environ) all match sweep.json (``ProcessIdentity``).
    """

    LOG = "process.log"
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
        with self._lock:
            try:
                home.mkdir()
            except FileExistsError:  # the API resumes a failed or cancelled sweep instead (resume)
                raise BackendError(409, f"sweep '{spec.name}' already exists (local backend, {home})") from None
            storage.write_text_atomic(home / "spec.yaml", yaml.safe_dump(self._resolved(spec), sort_keys=False))
            command = [sys.executable, "-m", "service.cli", "run", str(home / "spec.yaml"), "--resume"]
            self._launch(home, spec.name, command,
                         {"owner": owner, "created": _now(), "storage_uri": self.storage_uri(spec)})
        return self.get(spec.name)

    def _resolved(self, spec: SweepSpec) -> dict:
        resolved = spec.model_dump(mode="json")
        resolved["storage"]["uri"] = self.storage_uri(spec)
        return resolved

    def _launch(self, home: Path, name: str, command: list[str], record: dict) -> None:
        """Start ``command`` as the sweep's process and record it in sweep.json (under the lock)."""
        token = secrets.token_hex(16)
        # Its own session: cancel signals the driver and the Ray processes it started, together.
        # The service's own settings (its API token above all) stay out of the sweep: the driver
        # forwards SWEEP_* variables to every Ray worker. The process token proves later that a
        # pid is still this sweep's process (pids are reused).
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_SERVICE_")}
        env[self.TOKEN_ENV] = token
        process = self._start(command, home / self.LOG, env)
        identity = ProcessIdentity(process.pid, _start_time(process.pid) or -1, token)
        # Popen may return while exec still sets up the new image (its environ reads empty for a few
        # milliseconds): wait until it carries its token, so a cancel right after this finds it ours.
        deadline = time.monotonic() + 5
        while not identity.alive() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        info = {"name": name, "pid": process.pid, "start_time": identity.start_time, "process_token": token, **record}
        storage.write_text_atomic(home / "sweep.json", json.dumps(info))
        self._processes[name] = process
        threading.Thread(target=self._record_exit, args=(home, process, token), daemon=True).start()

    def _start(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        """The sweep's process, its output appended to ``log_path`` (tests replace the command, not this)."""
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        try:
            return subprocess.Popen(command, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            os.close(fd)

    def resume(self, name: str, spec: SweepSpec | None = None) -> SweepInfo:
        """A failed or cancelled sweep continues from its storage: ``sweepctl resume NAME --storage
        URI`` (finished trials are kept, unfinished ones continue from their last checkpoint),
        started and recorded as submit starts a sweep, still its first submitter's."""
        with self._lock:
            home = self._home(name)
            record = self._record(home)
            state = self.get(name).state
            if state not in RESUMABLE_STATES:
                raise not_resumable(name, state)
            stopping = ProcessIdentity.of(record).group()
            if stopping:  # cancelled, and its driver still winds down (at most grace_seconds)
                raise BackendError(409, f"sweep '{name}' is {state} but its process (pid {stopping[0].pid}) is still "
                                        "stopping; resume it once it has ended (a few seconds)")
            if spec is not None and yaml.safe_load(_read_text(home / "spec.yaml")) != self._resolved(spec):
                raise BackendError(409, f"sweep '{name}' ({state}) was submitted with another spec: resubmit that "
                                        f"spec (or POST /sweeps/{name}/resume) to resume it, or submit this one "
                                        "under another name")
            storage_uri = record.get("storage_uri", "")
            if storage.file_exists(SweepStore(storage_uri, name).spec_uri):
                command = [sys.executable, "-m", "service.cli", "resume", name, "--storage", storage_uri]
            else:  # cancelled before its driver wrote anything: there is nothing to resume, start it
                command = [sys.executable, "-m", "service.cli", "run", str(home / "spec.yaml"), "--resume"]
            for marker in ("cancelled", "exit_code"):
                (home / marker).unlink(missing_ok=True)
            _append_line(home / self.LOG, f"--- resumed at {_now()} (the sweep service): {' '.join(command[1:])}")
            self._launch(home, name, command, {key: record.get(key) for key in ("owner", "created", "storage_uri")})
        return self.get(name)

    def _record_exit(self, home: Path, process: subprocess.Popen, token: str) -> None:
        code = process.wait()
        with self._lock:
            try:
                current = self._record(home).get("process_token")
            except BackendError:  # forgotten meanwhile
                return
            if current == token:  # not a process a resume has replaced since
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
        except FileNotFoundError:
            raise not_found(home.name, f"in {self.workdir}") from None
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

    def cancel(self, name: str, by: str = SERVICE) -> SweepInfo:
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
        try:  # the driver reads it when SIGTERM stops it, and records "cancelled" by whom and when
            store.request_cancel(by=by, owner=current.owner)
        except storage.StorageError:
            pass  # the driver then records "interrupted"; the service still answers cancelled
        # SIGTERM to the driver alone, as Kubernetes sends it: the driver stops its trials, records
        # the cancel and shuts its Ray down. Its Ray processes signalled too would die under it
        # mid-clean-up. Whatever is left after the grace period is killed, the group together.
        identity.signal(signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, args=(home, identity, store, by), daemon=True).start()
        return self.get(name)

    def _kill_after_grace(self, home: Path, identity: ProcessIdentity, store: SweepStore, by: str) -> None:
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline:
            if not identity.group():
                return
            time.sleep(0.2)
        for member in identity.group():
            member.signal(signal.SIGKILL)
        with self._lock:
            try:
                if self._record(home).get("process_token") != identity.token:
                    return  # resumed since: the record is the new run's
            except BackendError:
                return
        store.mark_cancelled(by=by)  # killed: it could not say so itself

    def forget(self, name: str, delete_data: Callable[[], None]) -> None:
        """Then remove the sweep's directory in the workdir (its record, spec, log): the name is free."""
        with self._lock:
            home = self._home(name)
            state = self.get(name).state
            if state not in TERMINAL_STATES:
                raise still_running(name, state)
            stopping = ProcessIdentity.of(self._record(home)).group()
            if stopping:
                raise BackendError(409, f"sweep '{name}' is {state} but its process (pid {stopping[0].pid}) is still "
                                        "stopping; try again once it has ended; nothing was deleted")
            delete_data()
            shutil.rmtree(home)  # checked above: a real directory, a direct child of the workdir
            self._processes.pop(name, None)

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


def _append_line(path: Path, line: str) -> None:
    """One line at the end of a file of the workdir, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


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
        """Send ``sig`` if (and only if) the process is still this one."""
        return _signal_if(self.pid, self.alive, sig)

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


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class DriverProcess:
    """A sweep's driver as its ``driver.json`` names it (trainer/driver/lock.py writes host, pid,
    boot_id and pid_start_time): for `sweepctl cancel` without a service. The lock's token lives
    only in the driver's memory, so what proves the process is the rest: this host, this boot, the
    pid, and the pid's start time (clock ticks since boot), which no later process under a reused
    pid shares. A record without them (an older driver) proves nothing: such a driver is never
    signalled."""

    host: str
    pid: int
    boot_id: str | None
    start_time: int | None

    @classmethod
    def of(cls, driver: dict) -> DriverProcess:
        pid, start, boot = driver.get("pid"), driver.get("pid_start_time"), driver.get("boot_id")
        return cls(str(driver.get("host", "")),
                   pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
                   boot if isinstance(boot, str) and boot else None,
                   start if isinstance(start, int) and not isinstance(start, bool) else None)

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def provable(self) -> bool:
        """Whether the record says enough to prove (or disprove) that a process is this driver."""
        return self.boot_id is not None and self.start_time is not None

    def running(self) -> bool | None:
        """On this host: True if the pid runs and is provably this driver, False if it is provably
        gone (no such pid, a zombie, another boot, another start time), None if a process has the
        pid but the record cannot prove it is the driver (no identity: an older driver.json)."""
        if self.pid <= 1 or not self.here:
            return False
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False  # written before a reboot: the pid is someone else's now
        fields = _proc_stat(self.pid)
        if not fields or fields[0] == "Z":
            return False
        if self.start_time is None:
            return None
        return _start_time(self.pid) == self.start_time

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process is still provably the driver (through a pidfd, as ProcessIdentity)."""
        return _signal_if(self.pid, lambda: self.running() is True, sig)


def _signal_if(pid: int, still_ours, sig: int) -> bool:
    """Send ``sig`` to ``pid`` if ``still_ours()``. With a pidfd (Linux 5.3+) the check and the
    signal reach the same process even if the pid is reused in between."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if not still_ours():
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


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

    def _rayjob(self, name: str) -> dict | None:
        """The sweep's RayJob, or None when there is none (anymore)."""
        if not valid_name(name):
            raise not_found(name, f"in namespace {self.namespace}")
        try:
            return self._call("read the RayJob", name, "get_namespaced_custom_object", name=name)
        except BackendError as err:
            if err.status != 404:
                raise
            return None

    def _current(self, name: str) -> tuple[dict | None, SweepInfo]:
        """(its RayJob or None, what the service knows of the sweep: from the RayJob, else storage)."""
        rayjob = self._rayjob(name)
        if rayjob is not None:
            return rayjob, self._info(rayjob)
        gone = self._from_storage(name)
        if gone is None:
            raise not_found(name, f"in namespace {self.namespace} (no RayJob, nothing in {self.options.storage_uri})")
        return None, gone

    def _from_storage(self, name: str) -> SweepInfo | None:
        """A sweep whose RayJob is gone (cancelled, or removed after it ended) but whose record remains.
        Its owner is the one the cancel kept (cancel.json); a sweep whose RayJob ended otherwise has none."""
        store = SweepStore(self.options.storage_uri, name)
        index = store.read_index()
        if index is None:
            return None
        # who asked for a cancel (and whose the sweep is): only a cancelled or an unfinished one has one
        cancel = store.read_cancel_request() if index.status in ("cancelled", "running", "interrupted") else None
        state = {"finished": "succeeded", "cancelled": "cancelled", "failed": "failed"}.get(index.status)
        message = index.stop_reason or ""
        if state is None and cancel is not None:
            # running or interrupted, but cancelled and its RayJob deleted: the driver stops (or was
            # stopped before it could record it)
            state, message = "cancelled", f"cancelled by {cancel.by} at {cancel.requested_at}"
        elif state is None and index.status == "interrupted":
            state = "failed"  # stopped by a signal, and no RayJob retries it: a resume continues it
            message = f"interrupted ({index.stop_reason or 'a signal'}) and its RayJob is gone; resume continues it"
        elif state is None:
            state = "unknown"
            message = ("its record says running but its RayJob is gone (deleted by hand?): no driver runs it "
                       "through the service; a cancel marks it cancelled")
        return SweepInfo(
            name, state, index.started_at, self.options.storage_uri,
            message or "its RayJob is gone (removed after it finished, or cancelled); progress is from storage",
            cancel.owner if cancel is not None else None,
        )

    def list(self) -> list[SweepInfo]:
        found = self._call("list RayJobs", "*", "list_namespaced_custom_object", label_selector=MANAGED_BY)
        sweeps = {info.name: info for info in (self._info(item) for item in found.get("items", []))}
        # A sweep whose RayJob is gone (cancelled: the cancel deletes it) stays listed from storage.
        for name in list_sweeps(self.options.storage_uri):
            if name not in sweeps and valid_name(name):
                gone = self._from_storage(name)
                if gone is not None:
                    sweeps[name] = gone
        return sorted(sweeps.values(), key=lambda s: s.name)

    def cancel(self, name: str, by: str = SERVICE) -> SweepInfo:
        rayjob, current = self._current(name)
        if current.state in TERMINAL_STATES:
            raise BackendError(409, f"sweep '{name}' already {current.state}; nothing to cancel")
        store = SweepStore(current.storage_uri, name)
        # The driver reads it when the pod's SIGTERM stops it, and records "cancelled" by whom and when.
        try:
            request = store.request_cancel(by=by, owner=current.owner)
        except storage.StorageError as err:  # the driver then records "interrupted"; cancel anyway
            log.warning("could not record the cancel of sweep %s in storage: %s", name, err)
            request = None
        if rayjob is None:  # its record said running, but no RayJob runs it: only the record to correct
            store.mark_cancelled(by=by)
            return self.get(name)
        # Deleting the RayJob makes KubeRay delete its Ray cluster; results stay in storage.
        self._call("delete the RayJob", name, "delete_namespaced_custom_object", name=name)
        if request is not None:
            self._keep_unstarted(rayjob, current, store, request)
        return SweepInfo(name, "cancelled", current.created, current.storage_uri,
                         f"cancelled by {by} at {request.requested_at if request else _now()}; RayJob deleted",
                         current.owner)

    def _keep_unstarted(self, rayjob: dict, current: SweepInfo, store: SweepStore, request) -> None:
        """A sweep cancelled while pending has nothing in storage yet; with its RayJob gone it would
        vanish. Its spec and a record saying cancelled keep it listed and resumable (each written
        only if absent: a driver that did start keeps its own)."""
        from service.core.loading import parse_spec

        text = _embedded_spec_text(rayjob)
        if text is None:
            return
        try:
            spec = parse_spec(text, source=f"RayJob {current.name}")
            # the index the driver would have started with (trainer/driver/sweep.py), before any attempt
            objective = Objective(metric=spec.objective.metric, mode=spec.objective.mode)
            index = new_index(current.name, objective, max_epochs=max_epochs(spec), num_trials=num_trials(spec), attempt=0,
                              objectives=[Objective(metric=o.metric, mode=o.mode) for o in spec.objectives or ()],
                              constraints=[parse_constraint(c) for c in spec.constraints])
            store.keep_unstarted(text, unstarted_cancel_index(index, created=current.created, cancel=request))
        except Exception as err:  # noqa: BLE001 - the cancel itself happened; say why the record could not be kept
            log.warning("sweep %s was cancelled before its driver started, but its record could not be kept in %s: %s",
                        current.name, store.uri, err)

    def resume(self, name: str, spec: SweepSpec | None = None) -> SweepInfo:
        """A new RayJob for the sweep, rendered from the spec in its storage (the driver's
        ``sweepctl run - --resume`` restores the sweep from there), still its owner's. The old
        RayJob, if one is left (failed, or stopped), is deleted first: the sweep's name is its name."""
        from service.control.rayjob import SOURCE_ANNOTATION, cluster_spec, render_rayjob
        from service.core.loading import SpecError, parse_spec

        rayjob, current = self._current(name)
        if current.state not in RESUMABLE_STATES:
            raise not_resumable(name, current.state)
        store = SweepStore(current.storage_uri, name)
        try:
            text = store.read_spec_text()
        except FileNotFoundError:
            text = _embedded_spec_text(rayjob) if rayjob is not None else None
        if text is None:
            raise BackendError(409, f"sweep '{name}' has no spec in {store.spec_uri} to resume from; submit it again")
        try:
            stored = parse_spec(text, source=store.spec_uri)
        except SpecError as err:
            raise BackendError(409, f"sweep '{name}' cannot be resumed: its stored spec no longer loads: {err}") from None
        if spec is not None and cluster_spec(spec, self.options).model_dump(mode="json") != stored.model_dump(mode="json"):
            raise BackendError(409, f"sweep '{name}' ({current.state}) was submitted with another spec: resubmit "
                                    f"that spec (or POST /sweeps/{name}/resume) to resume it, or submit this one "
                                    "under another name")
        source = ((rayjob or {}).get("metadata", {}).get("annotations") or {}).get(SOURCE_ANNOTATION)
        body = render_rayjob(stored, self.options, source_yaml=source if isinstance(source, str) else None)
        if current.owner is not None:
            body["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = current.owner
        if rayjob is not None:
            self._delete_if_there(name)
        return self._info(self._call("create the RayJob", name, "create_namespaced_custom_object", body=body))

    def forget(self, name: str, delete_data: Callable[[], None]) -> None:
        """Then delete the sweep's RayJob if one is left (a finished or failed one): the name is free."""
        rayjob, current = self._current(name)
        if current.state not in TERMINAL_STATES:
            raise still_running(name, current.state)
        delete_data()
        if rayjob is not None:
            self._delete_if_there(name)

    def _delete_if_there(self, name: str) -> None:
        try:
            self._call("delete the RayJob", name, "delete_namespaced_custom_object", name=name)
        except BackendError as err:
            if err.status != 404:  # gone meanwhile: what was wanted
                raise

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

    def cancel(self, name: str, by: str = SERVICE) -> SweepInfo:
        self.get(name)
        raise BackendError(405, f"this server only shows the sweeps in storage (sweepctl ui): stop sweep '{name}' "
                                f"with `sweepctl cancel {name} --storage {self.storage_uri_root}` (or where its "
                                "driver runs: Ctrl-C, or `--server URL`)")

    def resume(self, name: str, spec: SweepSpec | None = None) -> SweepInfo:
        self.get(name)
        raise BackendError(405, f"this server only shows the sweeps in storage (sweepctl ui): resume sweep '{name}' "
                                f"with `sweepctl resume {name} --storage {self.storage_uri_root}`")

    def forget(self, name: str, delete_data: Callable[[], None]) -> None:
        self.get(name)
        raise BackendError(405, f"this server only shows the sweeps in storage (sweepctl ui): delete sweep '{name}' "
                                f"with `sweepctl delete {name} --storage {self.storage_uri_root} --yes`")

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


def _embedded_spec_text(rayjob: dict) -> str | None:
    """The resolved spec YAML the renderer put in the head container's environment."""
    from service.control.rayjob import SPEC_ENV

    try:
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        text = next(e["value"] for e in head.get("env", []) if e.get("name") == SPEC_ENV)
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        return None  # not rendered by us (or by an older renderer)
    return text if isinstance(text, str) else None


def _embedded_storage_uri(rayjob: dict) -> str | None:
    """storage.uri of the resolved spec the renderer put in the head container's environment."""
    try:
        return yaml.safe_load(_embedded_spec_text(rayjob) or "")["storage"]["uri"]
    except (KeyError, TypeError, yaml.YAMLError):
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
