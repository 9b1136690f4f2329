"""The machine's shared services (PostgreSQL, Redis): started when not running, never skipped."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.servers import wait_for_port

PG_ADMIN_URL = os.environ.get(
    "TRIAGE_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_PORT = int(os.environ.get("TRIAGE_TEST_REDIS_PORT", "6379"))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ensure_postgres() -> None:
    """Start the local PostgreSQL cluster if nothing answers on 5432."""
    if _listening(5432):
        return
    versions = sorted(glob.glob("/etc/postgresql/*"))
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("PostgreSQL is not running on 127.0.0.1:5432 and is not installed")
    version = os.path.basename(versions[-1])
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True
    )
    wait_for_port(5432)


def ensure_redis() -> None:
    """Start the shared redis-server if nothing answers on its port."""
    if _listening(REDIS_PORT):
        return
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no"],
        check=True,
    )
    wait_for_port(REDIS_PORT)


@contextmanager
def fresh_postgres_database(prefix: str = "cxr_test") -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    from sqlalchemy import create_engine, text

    ensure_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
