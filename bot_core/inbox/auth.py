"""Inbox security: the session signing key, CSRF tokens, and slowing down password guessing.

Sessions are Starlette's signed cookies (itsdangerous), HttpOnly and SameSite=Lax, Secure when
the public URL is https, valid for ``SESSION_SECONDS`` and scoped to ``/inbox``. They hold the
operator's name and a CSRF token; every request looks the operator up again, so removing one
ends their sessions. Every form carries the token and every POST is refused (403) without it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..store import Store

SESSION_COOKIE = "bot_core_inbox"
SESSION_SECONDS = 12 * 3600
MAX_LOCK = 60.0  # seconds: the longest a run of failures locks a name or a client out
_KEY_NAME = "session"


def session_key(store: Store, configured: str | None) -> str:
    """The key that signs session cookies: ``[inbox] secret_key``, else one generated once and
    kept in the database, so sessions survive a restart."""
    if configured:
        return configured
    with store.transaction() as conn:
        conn.execute("INSERT INTO inbox_keys (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                     (_KEY_NAME, secrets.token_urlsafe(32)))  # fmt: skip
        key: str = conn.execute("SELECT value FROM inbox_keys WHERE name = ?", (_KEY_NAME,)).fetchone()[0]
        return key


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (the login page makes it before any login)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request) -> dict[str, str]:
    """The POSTed form, or 403 unless it carries the session's CSRF token."""
    form = await request.form()
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if not (isinstance(sent, str) and expected and hmac.compare_digest(sent, expected)):
        raise HTTPException(
            403, "This form is out of date or did not come from the inbox: reload the page and try again."
        )
    return {key: value for key, value in form.items() if isinstance(value, str)}


class Throttle:
    """Failed logins lock a name and a client out for a while, doubling with each failure.

    Checked before the password is, so guessing costs the guesser time, not the server CPU;
    a success clears the name's count (the client's stays, so spraying names does not pay).
    """

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay = delay
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until)

    def wait(self, *keys: str) -> float:
        """Seconds until ``keys`` may try again (0: now)."""
        now = self.clock()
        return max([0.0] + [self._failures[k][1] - now for k in keys if k in self._failures])

    def failed(self, *keys: str) -> float:
        now = self.clock()
        if len(self._failures) > 10_000:  # forget old lockouts rather than grow without bound
            self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
        for key in keys:
            count = self._failures.get(key, (0, now))[0] + 1
            self._failures[key] = (count, now + min(self.delay * 2 ** (count - 1), MAX_LOCK))
        return self.wait(*keys)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
