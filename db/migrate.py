"""Migrations from one place: ``upgrade`` under a database lock, ``require_current`` elsewhere.

Only ``cxr-triage db upgrade`` and ``cxr-triage up`` call ``upgrade``. It holds a lock for the
whole upgrade so that several upgraders started at once (the services of a first boot) run it
one after the other, and each later one finds the schema at head and does nothing: a
PostgreSQL transaction-level advisory lock, or SQLite's exclusive write transaction. The node,
the workers and the other commands call ``require_current`` and refuse to start on a schema
that is not the one this version needs.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from common.errors import TriageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The advisory-lock key every upgrader of a PostgreSQL database waits on (any fixed bigint).
MIGRATION_LOCK_KEY = int.from_bytes(b"cxrtmigr", "big")
UPGRADE_ADVICE = "run `cxr-triage db upgrade`"


class SchemaError(TriageError):
    """The database schema is not the one this version of cxr-triage needs."""


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def _lock(connection: Connection) -> None:
    """Take the migration lock for the rest of ``connection``'s transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": MIGRATION_LOCK_KEY})
    elif connection.dialect.name == "sqlite" and not _in_transaction(connection):
        # pysqlite begins no transaction before DDL; an explicit exclusive one makes the
        # upgrade atomic and makes a concurrent upgrader wait (busy_timeout) for its end.
        # An engine that already began with BEGIN IMMEDIATE (the worker's) holds the write
        # lock, which is enough.
        connection.exec_driver_sql("BEGIN EXCLUSIVE")


def _in_transaction(connection: Connection) -> bool:
    """Whether the SQLite driver connection has already begun a transaction."""
    return bool(getattr(connection.connection.driver_connection, "in_transaction", False))


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of ``engine``'s database to ``revision``, holding the migration lock."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        _lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first upgrade."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision the packaged migrations define."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def require_current(engine: Engine) -> str:
    """The head revision, when the database is at it; otherwise ``SchemaError`` says what to do."""
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise SchemaError(
            f"cannot read the schema revision of {engine.url.render_as_string()}: "
            f"{str(exc.orig).strip()}; check TRIAGE_DB_URL and that the database is running"
        ) from exc
    head = head_revision()
    if current == head:
        return head
    if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
        raise SchemaError(
            f"the database schema is at {current}, which this version of cxr-triage does not "
            f"know (it needs {head}): run the cxr-triage version that migrated it")
    raise SchemaError(f"the database schema is at {current or 'no revision (empty)'}, "
                      f"this version needs {head}: {UPGRADE_ADVICE}")
