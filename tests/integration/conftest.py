"""Fixtures for tests against real peers: the node process and a private Redis broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.markers import mark_folder
from tests.support.node import NodeProcess
from tests.support.servers import RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here runs against real servers."""
    mark_folder(items, Path(__file__).parent)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (so a test may kill it)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def node(tmp_path: Path, redis_server: RedisServer) -> Iterator[NodeProcess]:
    """A node on SQLite with a private Redis broker."""
    process = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'node.db'}",
                          redis_server.url).start()
    yield process
    process.stop()
