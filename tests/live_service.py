"""The real sweep service (uvicorn + the FastAPI app) on a free localhost port, in a thread."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app):
    """Yields the base URL while uvicorn serves ``app``; stops it on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sweepctl(*args: str, server: str | None, token: str | None, home: Path, stdin: str | None = None):
    """`sweepctl ARGS` in a subprocess, as a user runs it (HOME isolates ~/.config/sweepctl)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEPCTL_", "XDG_CONFIG"))}
    env["HOME"] = str(home)
    if server:
        env["SWEEPCTL_SERVER"] = server
    if token:
        env["SWEEPCTL_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, input=stdin,
        capture_output=True, text=True, timeout=120,
    )
