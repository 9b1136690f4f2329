"""Web app settings, read from ``TRIAGE_WEB_*`` environment variables (README, Configuration)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import (
    SettingError,
    default_var_dir,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
)
from common.queues import BrokerSettings
from db.settings import DbSettings

COOKIE_SECURE_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class WebSettings:
    """Everything ``cxr-triage web`` needs.

    Attributes
    ----------
    host, port : where uvicorn listens (loopback by default).
    secret_key_file : signs session cookies; generated (mode 0600) when missing.
    session_lifetime_s : a session ends this long after login.
    cookie_secure : ``auto`` (Secure when the request came over https, directly or through a
        trusted proxy), ``true`` or ``false``.
    proxy_user_header : single sign-on: trust this header (e.g. ``X-Remote-User``) from
        ``trusted_proxies`` as the user name of an existing account; empty: off.
    trusted_proxies : client addresses whose proxy headers are believed.
    login_attempts, login_window_s : failed logins per user and address before a lockout of
        ``login_window_s``.
    refresh_s : how often the worklist page polls for new rows.
    page_size : worklist rows per page.
    model_dir : the ensemble whose version the health page shows (``TRIAGE_MODEL_DIR``).
    destination_alert_s : a destination failing for longer than this makes ``/readyz``
        ``degraded`` and counts in ``triage_destinations_alerting``
        (``TRIAGE_DESTINATION_ALERT_S``).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    secret_key_file: Path = dataclasses.field(
        default_factory=lambda: default_var_dir() / "web-secret.key")
    session_lifetime_s: float = 8 * 3600.0
    cookie_secure: str = "auto"
    proxy_user_header: str = ""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    login_attempts: int = 5
    login_window_s: float = 300.0
    refresh_s: float = 10.0
    page_size: int = 50
    model_dir: Path = dataclasses.field(default_factory=lambda: default_var_dir() / "model")
    destination_alert_s: float = 900.0
    db: DbSettings = dataclasses.field(default_factory=lambda: DbSettings(url="sqlite://"))
    broker: BrokerSettings = dataclasses.field(default_factory=BrokerSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebSettings:
        d = cls()  # every default is written once, on the fields above
        settings = cls(
            host=env_str(env, "WEB_HOST", d.host),
            port=env_int(env, "WEB_PORT", d.port),
            secret_key_file=env_path(env, "WEB_SECRET_KEY_FILE", d.secret_key_file),
            session_lifetime_s=env_float(env, "WEB_SESSION_LIFETIME_S", d.session_lifetime_s),
            cookie_secure=env_str(env, "WEB_COOKIE_SECURE", d.cookie_secure).lower(),
            proxy_user_header=env_str(env, "WEB_PROXY_USER_HEADER", d.proxy_user_header),
            trusted_proxies=env_list(env, "WEB_TRUSTED_PROXIES", d.trusted_proxies),
            login_attempts=env_int(env, "WEB_LOGIN_ATTEMPTS", d.login_attempts),
            login_window_s=env_float(env, "WEB_LOGIN_WINDOW_S", d.login_window_s),
            refresh_s=env_float(env, "WEB_REFRESH_S", d.refresh_s),
            page_size=env_int(env, "WEB_PAGE_SIZE", d.page_size),
            model_dir=env_path(env, "MODEL_DIR", d.model_dir),
            destination_alert_s=env_float(env, "DESTINATION_ALERT_S", d.destination_alert_s),
            db=DbSettings.from_env(env),
            broker=BrokerSettings.from_env(env),
        )
        if settings.cookie_secure not in COOKIE_SECURE_CHOICES:
            raise SettingError(f"TRIAGE_WEB_COOKIE_SECURE={settings.cookie_secure!r}: use "
                               + ", ".join(COOKIE_SECURE_CHOICES))
        if settings.page_size < 1 or settings.login_attempts < 1:
            raise SettingError("TRIAGE_WEB_PAGE_SIZE and TRIAGE_WEB_LOGIN_ATTEMPTS must be >= 1")
        return settings


def load_secret(path: Path) -> bytes:
    """The session signing key in ``path``; a new random one is written (0600) if missing."""
    if path.is_file():
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise SettingError(f"{path} (TRIAGE_WEB_SECRET_KEY_FILE) holds fewer than 32 bytes; "
                               "delete it to have a new key generated")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first
        return load_secret(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key
