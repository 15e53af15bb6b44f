"""Client of the sweep service, for `sweepctl submit/status/list`, and `cancel`/`resume`/`delete`/`trials`/`logs`/`pull` on a server.

Standard library only (urllib), so the CLI stays quick to start. Where to connect:
    server   --server URL, else $SWEEPCTL_SERVER, else `server:` in the config file
    token    $SWEEPCTL_TOKEN, else `token:` in the config file
The config file is $XDG_CONFIG_HOME/sweepctl/config.yaml (default ~/.config/sweepctl/config.yaml);
it holds a secret, so it is refused unless only its owner can read it (chmod 600).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from service.core.errors import UserError

SERVER_ENV = "SWEEPCTL_SERVER"
TOKEN_ENV = "SWEEPCTL_TOKEN"
TIMEOUT_SECONDS = 60


class ServiceError(Exception):
    """The service answered with an error (``status`` ≥ 400) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "sweepctl" / "config.yaml"


def read_config(path: Path | None = None) -> dict:
    """The config file's settings ({} when there is none); refuses a file others can read."""
    path = path or config_path()
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(
            f"{path} holds the service token but its permissions are {mode:04o}; "
            f"make it private first: chmod 600 {path}"
        )
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or set(data) - {"server", "token"}:
        raise UserError(f"{path} must be a mapping with only the keys server: and token:")
    return data


def configured_server(server: str | None = None) -> str | None:
    """The sweep service this sweepctl talks to, if one is configured (flag, environment, file)."""
    return server or os.environ.get(SERVER_ENV) or read_config().get("server")


@dataclass
class SweepClient:
    server: str
    token: str

    @classmethod
    def from_settings(cls, server: str | None = None) -> SweepClient:
        server = server or os.environ.get(SERVER_ENV)
        token = os.environ.get(TOKEN_ENV)
        if not (server and token):
            where = config_path()
            config = read_config(where)
            server = server or config.get("server")
            token = token or config.get("token")
        if not server:
            raise UserError(
                f"which sweep service? pass --server URL, set {SERVER_ENV}, or put server: in {config_path()}"
            )
        if not token:
            raise UserError(f"no token for {server}: set {TOKEN_ENV}, or put token: in {config_path()} (chmod 600)")
        return cls(str(server).rstrip("/"), str(token))

    # ---------------------------------------------------------------------- calls
    def submit(self, spec_text: str, overrides: list[str] = ()) -> dict:
        query = urllib.parse.urlencode([("set", o) for o in overrides])
        path = "/sweeps" + (f"?{query}" if query else "")
        return self._call("POST", path, spec_text.encode(), "application/yaml")

    def status(self, name: str) -> dict:
        return self._call("GET", f"/sweeps/{_quote(name)}")

    def list(self) -> list[dict]:
        return self._call("GET", "/sweeps")["sweeps"]

    def cancel(self, name: str) -> dict:
        return self._call("DELETE", f"/sweeps/{_quote(name)}")

    def resume(self, name: str) -> dict:
        return self._call("POST", f"/sweeps/{_quote(name)}/resume")

    def stored_data(self, name: str) -> dict:
        """What deleting the sweep's data would remove: prefix, objects, bytes."""
        return self._call("GET", f"/sweeps/{_quote(name)}/data")

    def delete_data(self, name: str) -> dict:
        return self._call("DELETE", f"/sweeps/{_quote(name)}/data?confirm={_quote(name)}")

    def logs(self, name: str, tail: int = 0) -> str:
        return self._call("GET", f"/sweeps/{_quote(name)}/logs" + (f"?tail={tail}" if tail else ""), raw=True)

    def trials(self, name: str, sort: str | None = None, status: str | None = None) -> dict:
        query = urllib.parse.urlencode([(k, v) for k, v in (("sort", sort), ("status", status)) if v])
        return self._call("GET", f"/sweeps/{_quote(name)}/trials" + (f"?{query}" if query else ""))

    def trial(self, name: str, trial_id: str) -> dict:
        return self._call("GET", f"/sweeps/{_quote(name)}/trials/{_quote(trial_id)}")

    def trial_logs(self, name: str, trial_id: str) -> str:
        return self._call("GET", f"/sweeps/{_quote(name)}/trials/{_quote(trial_id)}/logs", raw=True)

    def best(self, name: str) -> dict:
        return self._call("GET", f"/sweeps/{_quote(name)}/best")

    @contextlib.contextmanager
    def checkpoint(self, name: str, trial_id: str):
        """The trial's checkpoint tar as a stream to read once (the HTTP response: nothing is
        buffered here), and the checkpoint's URI in storage: ``with client.checkpoint(...) as (stream, uri)``."""
        response = self._open("GET", f"/sweeps/{_quote(name)}/trials/{_quote(trial_id)}/checkpoint")
        with response:
            yield response, urllib.parse.unquote(response.headers.get("X-Sweep-Checkpoint", ""))

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, raw=False):
        with self._open(method, path, body, content_type) as response:
            try:
                data = response.read().decode()
            except OSError as err:
                raise ServiceError(0, f"the connection to {self.server} broke: {err}") from None
        return data if raw else json.loads(data)

    def _open(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        request = urllib.request.Request(self.server + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as err:
            raise ServiceError(err.code, _error_message(err.code, err.read().decode(errors="replace"))) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServiceError(
                0, f"cannot reach the sweep service at {self.server}: {reason}. "
                f"Is it running, and is --server / {SERVER_ENV} right?"
            ) from None


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _error_message(status: int, body: str) -> str:
    """The server's own words: ``detail`` (a string, or the spec loader's message)."""
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    if isinstance(detail, dict):
        detail = detail.get("message") or json.dumps(detail)
    elif isinstance(detail, list):  # FastAPI's own request validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"{detail} (HTTP {status})"
