"""Local accounts and service-account tokens: argon2id hashes, roles and the PHI permission."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import Role, ServiceToken, WebUser, utcnow
from web.errors import WebError

MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "ctt_"
_HASHER = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    """A user or service account as the app sees it (no hash)."""

    id: int
    name: str
    role: Role
    can_view_phi: bool
    kind: str  # "user" or "token"


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WebError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def add_user(session: Session, username: str, password: str, role: Role,
             can_view_phi: bool = False) -> int:
    """Create an account; fails if the name is taken."""
    _check_password(password)
    if session.scalar(select(WebUser.id).where(WebUser.username == username)) is not None:
        raise WebError(f"user {username!r} exists; use `cxr-triage users passwd` to change it")
    user = WebUser(username=username, password_hash=_HASHER.hash(password), role=role,
                   can_view_phi=can_view_phi, active=True)
    session.add(user)
    session.flush()
    return user.id


def set_password(session: Session, username: str, password: str) -> None:
    """Replace a password; the user's existing sessions end."""
    _check_password(password)
    user = _user(session, username)
    user.password_hash = _HASHER.hash(password)
    user.password_changed_at = utcnow()


def remove_user(session: Session, username: str) -> None:
    """Delete an account (its audit entries stay, under its name)."""
    session.delete(_user(session, username))


def list_users(session: Session) -> list[WebUser]:
    """Every local account, by name."""
    return list(session.scalars(select(WebUser).order_by(WebUser.username)))


def _user(session: Session, username: str) -> WebUser:
    user = session.scalar(select(WebUser).where(WebUser.username == username))
    if user is None:
        raise WebError(f"no user {username!r} (`cxr-triage users list` shows them)")
    return user


def authenticate(session: Session, username: str, password: str) -> Account | None:
    """The account if ``password`` is right (rehashing an outdated hash), else ``None``."""
    user = session.scalar(select(WebUser).where(WebUser.username == username))
    try:
        _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return Account(user.id, user.username, user.role, user.can_view_phi, "user")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: Role, can_view_phi: bool = False) -> str:
    """A new bearer token for service account ``name``; shown once, only its hash is kept."""
    if session.scalar(select(ServiceToken.id).where(ServiceToken.name == name)) is not None:
        raise WebError(f"service account {name!r} has a token; revoke it first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ServiceToken(name=name, token_sha256=token_digest(token), role=role,
                             can_view_phi=can_view_phi))
    return token


def revoke_token(session: Session, name: str) -> bool:
    """Delete the token of service account ``name``; whether there was one."""
    result = session.execute(delete(ServiceToken).where(ServiceToken.name == name))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def token_account(session: Session, token: str) -> Account | None:
    """The service account a bearer token belongs to (and note when it was used)."""
    row = session.scalar(select(ServiceToken).where(
        ServiceToken.token_sha256 == token_digest(token)))
    if row is None:
        return None
    row.last_used_at = utcnow()
    return Account(row.id, row.name, row.role, row.can_view_phi, "token")


def user_account(session: Session, username: str) -> tuple[Account, float] | None:
    """An active user by name, with when its password last changed (epoch seconds)."""
    user = session.scalar(select(WebUser).where(WebUser.username == username,
                                                WebUser.active.is_(True)))
    if user is None:
        return None
    account = Account(user.id, user.username, user.role, user.can_view_phi, "user")
    return account, user.password_changed_at.timestamp()
