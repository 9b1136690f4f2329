"""Migrations from one place: ``upgrade`` under a database lock, ``require_current`` elsewhere.

Only ``cxr-triage db upgrade`` and ``cxr-triage up`` call ``upgrade``. It holds a lock for the
whole upgrade so that several upgraders started at once (the services of a first boot) run it
one after the other, and each later one finds the schema at head and does nothing: a
PostgreSQL transaction-level advisory lock, or SQLite's exclusive write transaction. The node,
the workers and the other commands call ``require_current`` and refuse to start on a schema
that is not the one this version needs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from common.errors import TriageError

if TYPE_CHECKING:  # Alembic takes ~0.5 s to import; `require_current` avoids it (fast path)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The advisory-lock key every upgrader of a PostgreSQL database waits on (any fixed bigint).
MIGRATION_LOCK_KEY = int.from_bytes(b"cxrtmigr", "big")
UPGRADE_ADVICE = "run `cxr-triage db upgrade`"


class SchemaError(TriageError):
    """The database schema is not the one this version of cxr-triage needs."""


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

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
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        _lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first upgrade."""
    stored = _stored_revision(engine)  # one row: no need for Alembic
    if stored is not None:
        return stored
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision the packaged migrations define."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


_REVISION = re.compile(r"^revision(?::\s*str)?\s*=\s*[\"'](\w+)[\"']", re.MULTILINE)
_DOWN = re.compile(r"^down_revision[^=]*=\s*[\"'](\w+)[\"']", re.MULTILINE)


def _declared_head() -> str | None:
    """The head read from the revision files' text, without importing Alembic (or ``None``)."""
    revisions, downs = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text()
        revisions.update(_REVISION.findall(source))
        downs.update(_DOWN.findall(source))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(engine: Engine) -> str | None:
    """``alembic_version``'s single row read directly; ``None`` when the table is missing."""
    with engine.connect() as connection:
        try:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        except (OperationalError, ProgrammingError):
            return None
    return str(rows[0][0]) if len(rows) == 1 else None


def require_current(engine: Engine) -> str:
    """The head revision, when the database is at it; otherwise ``SchemaError`` says what to do.

    The common case (at head) is answered from the revision files and ``alembic_version``
    alone; anything else takes Alembic's own path for an exact message.
    """
    try:
        stored = _stored_revision(engine)
    except OperationalError:
        stored = None  # can't connect: the full path below says so
    declared = _declared_head()
    if stored is not None and stored == declared:
        return declared
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
