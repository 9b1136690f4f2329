"""Read-only commands start quietly and import only what they use; errors have one form."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_triage.cli import COMMAND_HOMES, COMMAND_MODULES, build_parser
from tests.support.node import migrate

READ_ONLY = (["worklist"], ["deliveries"], ["db", "current"], ["model", "list"], ["drift"])
HEAVY = ("torch", "celery", "pydicom", "pynetdicom", "highdicom", "fastapi")


def test_every_command_home_registers_its_command() -> None:
    everything = build_parser()
    registered = set(everything._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for command, module in COMMAND_HOMES.items():
        assert module in COMMAND_MODULES, module
        assert command in registered, command
        only = build_parser(command)
        assert command in only._subparsers._group_actions[0].choices, (command, module)  # type: ignore[union-attr]


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "TRIAGE_DB_URL": db_url, "TRIAGE_VAR_DIR": str(tmp_path / "var"),
            "TRIAGE_MODEL_STORE": str(tmp_path / "models")}


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_are_quiet_and_light(command: list[str], tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'triage.db'}"
    migrate(db_url)
    probe = ("import sys, runpy; sys.argv = ['cxr-triage', *sys.argv[1:]]\n"
             "from cxr_triage.cli import main\n"
             "code = main()\n"
             f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
             "sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", probe, *command], env=_env(tmp_path, db_url),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 4), run.stderr  # drift: 0 (nothing to compare) or 4
    assert "alembic" not in run.stderr and " INFO " not in run.stderr, run.stderr
    heavy = run.stderr.split("HEAVY", 1)[1]
    assert "torch" not in heavy and "celery" not in heavy, heavy


def _cli(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxr_triage", *args], capture_output=True,
                          text=True, env=_env(tmp_path, db_url), timeout=120)


def test_errors_follow_one_form(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'triage.db'}"
    migrate(db_url)
    unknown = _cli(tmp_path, db_url, "redeliver", "--report", "999")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("cxr-triage redeliver: error: no report with id 999")
    bare = _cli(tmp_path, db_url, "redeliver")
    assert bare.returncode == 2 and "cxr-triage redeliver: error: give --report" in bare.stderr
    empty = _cli(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}", "worklist")
    assert empty.returncode == 2 and empty.stderr.startswith("cxr-triage worklist: error: ")
    purge = _cli(tmp_path, db_url, "purge", "--older-than", "-3")
    assert purge.returncode == 2 and purge.stderr.startswith("cxr-triage purge: error: ")
    for run in (unknown, bare, empty, purge):
        assert "Traceback" not in run.stderr
