"""Login and logout (local accounts; the SSO header mode needs neither)."""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from web.accounts import authenticate
from web.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Authenticator,
    CurrentUser,
    DbSession,
    client_address,
)
from web.pages import render

LOGGER = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a local path (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/worklist"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    auth: Authenticator = request.app.state.auth
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, login_csrf=token, next=_safe_next(next))
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=auth.cookie_secure(request), max_age=3600)
    return response


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, session: DbSession, username: Annotated[str, Form()],
          password: Annotated[str, Form()], csrf_token: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/worklist") -> Response:
    auth: Authenticator = request.app.state.auth
    client = client_address(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return render(request, "error.html", None, status_code=403, title="Refused",
                      message="missing or wrong CSRF token; reload the login page")
    if auth.limiter.blocked(username, client):
        LOGGER.warning("login: too many failures from %s; refused for now", client)
        return render(request, "login.html", None, status_code=429, login_csrf=expected,
                      next=_safe_next(next), error="Too many failed logins; wait a few "
                      "minutes and try again.")
    account = authenticate(session, username, password)
    if account is None:
        auth.limiter.failed(username, client)
        LOGGER.info("login: failed from %s", client)
        return render(request, "login.html", None, status_code=401, login_csrf=expected,
                      next=_safe_next(next), error="Wrong user name or password.")
    auth.limiter.succeeded(username, client)
    cookie, _csrf = auth.issue(account)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="lax",
                        secure=auth.cookie_secure(request),
                        max_age=int(auth.settings.session_lifetime_s))
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(_principal: CurrentUser) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
