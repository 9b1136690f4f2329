"""Database settings, read from ``TRIAGE_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.config import default_var_dir, env_str


def default_db_url() -> str:
    """SQLite under ``./var`` so the embedded defaults need no server."""
    return f"sqlite:///{default_var_dir() / 'triage.db'}"


@dataclass(frozen=True)
class DbSettings:
    """Where the database lives.

    Attributes
    ----------
    url : SQLAlchemy URL (``TRIAGE_DB_URL``); SQLite by default, PostgreSQL in production.
    """

    url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DbSettings:
        return cls(url=env_str(env, "DB_URL", default_db_url()))
