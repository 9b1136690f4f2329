"""The test suite's one axis: ``integration`` tests need servers, the rest need nothing.

Each folder's conftest marks its own tests with :func:`mark_folder`; a test parametrised onto
PostgreSQL (the ``db_url`` fixture's ``postgresql`` case) is marked wherever it lives. So
``pytest -m "not integration"`` runs with no server started.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import pytest

INTEGRATION = pytest.mark.integration


def mark_folder(items: Sequence[pytest.Item], folder: Path,
                modules: Collection[str] | None = None) -> None:
    """Mark the tests in ``folder`` as integration: all of them, or those in ``modules``."""
    for item in items:
        path = Path(str(item.path))
        if folder in path.parents and (modules is None or path.name in modules):
            item.add_marker(INTEGRATION)


def mark_postgresql_cases(items: Sequence[pytest.Item]) -> None:
    """Mark every test case that runs on PostgreSQL as integration."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_url") == "postgresql":
            item.add_marker(INTEGRATION)
        if {"postgres_url", "redis_available"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(INTEGRATION)
