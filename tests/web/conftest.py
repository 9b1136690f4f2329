"""Fixtures for the web tests: the real app on a migrated database, accounts, logins.

``test_browser.py`` drives Chromium against real node, worker, Redis and Orthanc processes,
so it is marked ``integration`` (tests/support/markers.py); the TestClient tests run on
SQLite without servers (and on PostgreSQL, marked by the ``db_url`` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from common.queues import BrokerSettings
from db.migrate import upgrade
from db.models import Role
from db.session import make_engine, make_session_factory
from db.settings import DbSettings
from tests.support.markers import mark_folder
from web import accounts
from web.app import create_app
from web.auth import LOGIN_COOKIE
from web.settings import WebSettings

PASSWORD = "correct horse battery"
USERS = (("admin", Role.ADMIN, True), ("reader", Role.RADIOLOGIST, True),
         ("nophi", Role.RADIOLOGIST, False))


@dataclass
class WebEnv:
    """The app, its database sessions and the service tokens made for the test."""

    client: TestClient
    sessions: sessionmaker[Session]
    tokens: dict[str, str]
    folder: Path


def web_settings(db_url: str, folder: Path, **changes: object) -> WebSettings:
    values: dict[str, object] = {
        "db": DbSettings(db_url), "secret_key_file": folder / "secret.key",
        "broker": BrokerSettings(filesystem_dir=folder / "broker"),
        "model_dir": folder / "model", **changes}
    return WebSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def web(db_url: str, tmp_path: Path) -> Iterator[WebEnv]:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    tokens = {}
    with sessions.begin() as session:
        for name, role, phi in USERS:
            accounts.add_user(session, name, PASSWORD, role, can_view_phi=phi)
        tokens["ris"] = accounts.create_token(session, "ris", Role.RADIOLOGIST, False)
        tokens["ris-phi"] = accounts.create_token(session, "ris-phi", Role.RADIOLOGIST, True)
    app = create_app(web_settings(db_url, tmp_path, login_attempts=3))
    with TestClient(app) as client:
        yield WebEnv(client, sessions, tokens, tmp_path)
    engine.dispose()


def login(client: TestClient, username: str, password: str = PASSWORD) -> int:
    """Log in through the form (its CSRF cookie included); the response status."""
    client.get("/login")
    response = client.post("/login", follow_redirects=False, data={
        "username": username, "password": password,
        "csrf_token": client.cookies.get(LOGIN_COOKIE) or "", "next": "/worklist"})
    return response.status_code


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests start servers (tests/support/markers.py)."""
    mark_folder(items, Path(__file__).parent, {"test_browser.py"})
