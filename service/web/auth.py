"""Browser sessions for the web pages: log in once with a token, then an HttpOnly cookie.

The cookie holds a random session id, never the token: the server keeps, per session, the sha256
of the token it was opened with (as the tokens file does) and looks the user up again on every
request, so removing a token from the tokens file ends its sessions at once. Sessions live in the
service's memory (one replica; a restart asks everyone to log in again) and expire after
``LIFETIME_SECONDS``. Each session has its own CSRF token, which the pages send with anything that
changes state (the cookie is SameSite=Strict too; the two together, as OWASP recommends).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from starlette.requests import Request

COOKIE = "sweep_session"
LIFETIME_SECONDS = 12 * 3600  # a working day; then log in again
MAX_SESSIONS = 10_000  # the oldest go first: a flood of logins cannot grow the service's memory


@dataclass
class Session:
    token_digest: bytes
    csrf: str
    expires: float  # time.time() seconds
    user: object = field(default=None)  # api.User, looked up again on every request

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, users, clock=time.time):
        self.users, self.clock = users, clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}  # session id → session, oldest first

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for ``token``'s user; None when the token is nobody's."""
        digest = hashlib.sha256(token.strip().encode()).digest()
        user = self.users.find_digest(digest) if token.strip() else None
        if user is None:
            return None
        session_id = secrets.token_urlsafe(32)
        session = Session(digest, secrets.token_urlsafe(32), self.clock() + LIFETIME_SECONDS, user)
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= self.clock():
                del self._sessions[session_id]
                session = None
        if session is None:
            return None
        user = self.users.find_digest(session.token_digest)  # the token may have been revoked since
        if user is None:
            self.logout(session_id)
            return None
        session.user = user
        return session

    def from_request(self, request: Request) -> Session | None:
        return self.get(request.cookies.get(COOKIE))

    def logout(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)
