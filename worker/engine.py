"""The worker's database engine, in a module light enough for read-only commands to import.

``cxr-triage drift`` and ``model list`` need only this, not the ensemble and Celery that
:mod:`worker.runtime` brings in (docs/benchmarks.md, start-up of read-only commands).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory


def _begin_immediate(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction starts.

    With WAL, a transaction that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT)
    if another process committed in between; BEGIN IMMEDIATE waits (busy_timeout) instead.
    """
    def no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_implicit_begin)
    event.listen(engine, "begin", begin)


def make_worker_engine(url: str) -> Engine:
    """The database engine the worker uses (``db.session.make_engine`` plus the above)."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    return engine


@contextmanager
def current_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a database whose schema is current (``cxr-triage db upgrade`` migrates;
    a command on an older schema stops with the advice to run it)."""
    from db.migrate import require_current

    engine = make_worker_engine(url)
    try:
        require_current(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()
