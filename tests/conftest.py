"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.markers import mark_postgresql_cases
from tests.support.services import ensure_postgres, ensure_redis, fresh_postgres_database

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRIAGE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (CI has it too): a missing copy fails, never skips."""
    if not (SHARED_DATA / "dicom" / "manifest.csv").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set TRIAGE_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_dicom(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_available() -> None:
    ensure_redis()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite (a file per test) and on PostgreSQL (a database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'triage.db'}"
        return
    ensure_postgres()
    with fresh_postgres_database() as url:
        yield url


def pytest_configure(config: pytest.Config) -> None:
    """The suite's scoring reference is exact torch fp32, in this process and in the worker,
    node and rescore processes it starts (unset, the commands run ``auto``: a fast path chosen
    for this CPU). Tests of ``auto``, bf16, int8 and OpenVINO ask for them explicitly."""
    os.environ.setdefault("TRIAGE_INFERENCE_PRECISION", "fp32")
    os.environ.setdefault("TRIAGE_INFERENCE_BACKEND", "torch")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Cases on PostgreSQL need a server wherever they live (tests/support/markers.py)."""
    mark_postgresql_cases(items)
