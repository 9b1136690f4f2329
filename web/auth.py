"""Who is asking: session cookies, bearer tokens, a trusted SSO header; CSRF and login limits.

A session is a signed cookie (itsdangerous, ``TRIAGE_WEB_SECRET_KEY_FILE``) holding the user
name, a CSRF token and when it was issued; it is HttpOnly, SameSite=Lax, and Secure when the
request came over TLS. Every state-changing request of a browser session carries that CSRF
token (form field ``csrf_token`` or header ``X-CSRF-Token``). Bearer tokens (service accounts)
carry no ambient credential, so they need none.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from db.models import Role
from web.accounts import Account, token_account, user_account
from web.settings import WebSettings

SESSION_COOKIE = "triage_session"
LOGIN_COOKIE = "triage_login"  # the login form's CSRF token (double submit)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotAuthenticatedError(Exception):
    """No valid session, token or SSO header: pages redirect to /login, the API answers 401."""


class ForbiddenError(Exception):
    """Logged in, but the role may not do this (403)."""


@dataclass(frozen=True)
class Principal:
    """The account behind a request, and the CSRF token its forms must carry."""

    account: Account
    via: str  # session, token or proxy
    csrf: str | None = None

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def is_admin(self) -> bool:
        return self.account.role == Role.ADMIN

    @property
    def can_view_phi(self) -> bool:
        return self.account.can_view_phi


class LoginLimiter:
    """At most ``attempts`` failed logins per (user, address) in ``window_s`` (in memory)."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def blocked(self, username: str, client: str) -> bool:
        return len(self._recent((username.lower(), client), time.monotonic())) >= self.attempts

    def failed(self, username: str, client: str) -> None:
        now = time.monotonic()
        self._recent((username.lower(), client), now).append(now)

    def succeeded(self, username: str, client: str) -> None:
        self._failures.pop((username.lower(), client), None)


class Authenticator:
    """Issues and checks sessions, and resolves a request to its :class:`Principal`."""

    def __init__(self, settings: WebSettings, secret: bytes) -> None:
        self.settings = settings
        self._secret = secret
        self._serializer = URLSafeTimedSerializer(secret, salt="triage-session")
        self.limiter = LoginLimiter(settings.login_attempts, settings.login_window_s)

    def issue(self, account: Account) -> tuple[str, str]:
        """A session cookie value for ``account``, and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"u": account.name, "c": csrf, "t": time.time()}), csrf

    def cookie_secure(self, request: Request) -> bool:
        if self.settings.cookie_secure != "auto":
            return self.settings.cookie_secure == "true"
        return self.scheme(request) == "https"

    def trusted(self, request: Request) -> bool:
        host = request.client.host if request.client else ""
        return host in self.settings.trusted_proxies

    def scheme(self, request: Request) -> str:
        forwarded = request.headers.get("x-forwarded-proto")
        return forwarded if forwarded and self.trusted(request) else request.url.scheme

    def resolve(self, request: Request, session: Session) -> Principal | None:
        """Bearer token, then the SSO header (from a trusted proxy), then the session cookie."""
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            account = token_account(session, authorization[7:].strip())
            return Principal(account, "token") if account else None
        header = self.settings.proxy_user_header
        if header and self.trusted(request) and (name := request.headers.get(header)):
            found = user_account(session, name.strip())
            if found is None:
                return None
            csrf = hmac.new(self._secret, b"csrf:" + found[0].name.encode(), "sha256").hexdigest()
            return Principal(found[0], "proxy", csrf)
        return self._from_cookie(request, session)

    def _from_cookie(self, request: Request, session: Session) -> Principal | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=int(self.settings.session_lifetime_s))
        except BadSignature:
            return None
        found = user_account(session, str(data.get("u", "")))
        if found is None or float(data.get("t", 0)) < found[1]:
            return None  # removed, deactivated, or the password changed since
        return Principal(found[0], "session", str(data["c"]))


def db_session(request: Request) -> Iterator[Session]:
    """One database session per request, committed when the handler returns."""
    with request.app.state.sessions.begin() as session:
        yield session


DbSession = Annotated[Session, Depends(db_session)]


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a state-changing request carries (header, or form field)."""
    if request.method in SAFE_METHODS:
        return None
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None and "form" in request.headers.get("content-type", ""):
        submitted = str((await request.form()).get(CSRF_FIELD) or "")
    return submitted or ""


def current_principal(request: Request, session: DbSession,
                      submitted: Annotated[str | None, Depends(submitted_csrf)]) -> Principal:
    """The logged-in account; state-changing browser requests must carry its CSRF token."""
    auth: Authenticator = request.app.state.auth
    principal = auth.resolve(request, session)
    if principal is None:
        raise NotAuthenticatedError()
    if submitted is not None and principal.csrf is not None and not hmac.compare_digest(
            submitted, principal.csrf):
        raise ForbiddenError("missing or wrong CSRF token; reload the page and try again")
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_admin(principal: CurrentUser) -> Principal:
    """Only role admin (the operations pages, redelivery, the audit log)."""
    if not principal.is_admin:
        raise ForbiddenError("this page is for administrators")
    return principal


AdminUser = Annotated[Principal, Depends(require_admin)]


def client_address(request: Request) -> str:
    """The caller's address for the audit log and the login limiter."""
    return request.client.host if request.client else "-"
