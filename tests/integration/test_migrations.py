"""Migrations: the models match them, they run once under a lock, and nothing else migrates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import db.models  # noqa: F401  (registers every table on Base.metadata)
from cxr_triage.cli import main
from db.base import Base
from db.migrate import current_revision, head_revision, upgrade
from db.session import make_engine

UPGRADERS = 3
ADVICE = "cxr-triage db upgrade"


def _diffs(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_models_match_the_migrations(db_url: str) -> None:
    diffs = _diffs(db_url)
    assert diffs == [], "models and migrations differ (write a migration):\n" + "\n".join(
        repr(d) for d in diffs)


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "TRIAGE_VAR_DIR": str(tmp_path / "var"), "TRIAGE_DB_URL": db_url}


def _cxr_triage(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cxr_triage", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_upgrades_all_succeed(db_url: str, tmp_path: Path) -> None:
    """What the compose file's services did on first boot: several upgrades of an empty database."""
    env = _env(tmp_path, db_url)
    processes = [_cxr_triage(env, "db", "upgrade") for _ in range(UPGRADERS)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert f"revision {head_revision()}" in out
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [
    ["node", "--port", "0"],
    ["worker", "--queues", "deliver", "--pool", "solo"],
    ["rescore", "--dry-run"],
])
def test_services_refuse_an_unmigrated_database(db_url: str, tmp_path: Path,
                                                command: list[str]) -> None:
    process = _cxr_triage(_env(tmp_path, db_url), *command)
    code = process.wait(timeout=120)
    _, err = process.communicate()
    assert code != 0
    assert ADVICE in err and f"needs {head_revision()}" in err, err[-3000:]
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None  # and nothing was migrated
    finally:
        engine.dispose()


def test_worklist_refuses_an_unmigrated_database(
        db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worklist", "--db-url", db_url]) == 2
    assert ADVICE in capsys.readouterr().err
