"""Lose nothing: broker down, database down, disk full and SIGKILL in the middle of a stream."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.status import StoreStatus
from dicom_node.storage import sha256_of
from tests.support import dicomgen
from tests.support.dcmtk import parse_storescu, storescu
from tests.support.node import NodeProcess
from tests.support.servers import RedisServer, TcpProxy, free_port
from tests.support.services import fresh_postgres_database


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _statuses(node: NodeProcess) -> set[object]:
    return {row[0] for row in node.instances().values()}


def test_broker_down_then_back(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis.url).start()
    try:
        redis.kill()
        files = dicomgen.write_series(tmp_path / "s", 3)
        run = storescu(node.port, files)
        assert len(run.succeeded) == 3, run.output[-2000:]
        time.sleep(3)  # enqueue and a few sweeps fail while the broker is down
        assert _statuses(node) == {"received"}
        assert "broker unavailable" in node.log()
        redis.start()  # same port
        assert _wait(lambda: _statuses(node) == {"queued"}), node.log()[-3000:]
        assert redis.llen("score") == 3
    finally:
        node.stop()
        redis.kill()


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[str, TcpProxy]]:
    """A fresh PostgreSQL database reached through a proxy that a test can cut."""
    with fresh_postgres_database() as url:
        proxy = TcpProxy(target_port=5432).start()
        yield url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
        proxy.stop()


def test_database_down_then_back(tmp_path: Path, proxied_postgres: tuple[str, TcpProxy],
                                 redis_server: RedisServer) -> None:
    url, proxy = proxied_postgres
    node = NodeProcess(tmp_path / "node", url, redis_server.url).start()
    try:
        first = dicomgen.write(dicomgen.radiograph(), tmp_path / "a.dcm")
        assert storescu(node.port, [first]).status_of(first) == 0
        proxy.stop()
        during = dicomgen.write(dicomgen.radiograph(), tmp_path / "b.dcm")
        status = storescu(node.port, [during]).status_of(during)
        assert status == StoreStatus.OUT_OF_RESOURCES_DATABASE
        stored = [p for p in node.storage.rglob("*.dcm") if ".incoming" not in p.parts]
        assert len(stored) == 1  # the refused instance left no file behind
        assert "database unavailable" in node.log()
        proxy.start()
        assert node.echo()
        assert storescu(node.port, [during]).status_of(during) == 0
        assert len(node.instances()) == 2
    finally:
        node.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: a disk that really fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                   check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full(tmp_path: Path, small_disk: Path, redis_server: RedisServer) -> None:
    node = NodeProcess(
        tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis_server.url,
        env={"TRIAGE_STORAGE_DIR": str(small_disk / "storage"),
             "TRIAGE_MIN_FREE_BYTES": str(3 * 1024 * 1024)},
    ).start()
    try:
        files = dicomgen.write_series(tmp_path / "s", 12, rows=700, columns=600)  # ~0.8 MB each
        run = storescu(node.port, files)
        statuses = [run.status_of(path) for path in files]
        assert statuses[0] == 0
        assert StoreStatus.OUT_OF_RESOURCES_DISK_FULL in statuses, run.output[-2000:]
        first_full = statuses.index(StoreStatus.OUT_OF_RESOURCES_DISK_FULL)
        assert set(statuses[first_full:]) == {StoreStatus.OUT_OF_RESOURCES_DISK_FULL}
        acknowledged = {
            str(dcmread(p).SOPInstanceUID)
            for p, s in zip(files, statuses, strict=True)
            if s == 0
        }
        assert set(node.instances()) == acknowledged
        assert list((small_disk / "storage" / ".incoming").iterdir()) == []
        assert "storage full" in node.log() and node.echo()
    finally:
        node.stop()


def _acknowledged(output: str) -> list[str]:
    return [name for name, status in parse_storescu(output).items() if status == 0]


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    db_url = f"sqlite:///{tmp_path / 'n.db'}"
    node = NodeProcess(tmp_path / "node", db_url, redis_server.url).start()
    files = dicomgen.write_series(tmp_path / "s", 60, rows=1024, columns=1024)  # 2 MB each
    command = ["storescu", "-d", "-nh", "-aet", "STORESCU", "-aec", "CXR_TRIAGE", "127.0.0.1",
               str(node.port), *map(str, files)]
    sender_log = tmp_path / "storescu.log"
    with sender_log.open("w") as log:
        sender = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            # killed once the modality holds 15 responses (the node logs " stored" before it
            # answers, so its log can run one ahead of what was acknowledged)
            assert _wait(lambda: len(_acknowledged(sender_log.read_text())) >= 15, 120), \
                node.log()[-2000:]
            node.kill()
            sender.wait(timeout=60)
        finally:
            node.kill()
            with contextlib.suppress(ProcessLookupError):
                sender.kill()
    output = sender_log.read_text()
    acknowledged = _acknowledged(output)
    assert 15 <= len(acknowledged) < 60
    restarted = NodeProcess(tmp_path / "node", db_url, redis_server.url)
    restarted.port = free_port()
    restarted.env["TRIAGE_PORT"] = str(restarted.port)
    restarted.start()
    try:
        rows = restarted.instances()
        for name in acknowledged:
            sop = str(dcmread(name).SOPInstanceUID)
            assert sop in rows, f"acknowledged {name} is not recorded"
            stored = Path(str(rows[sop][2]))
            assert stored.is_file() and sha256_of(stored) == rows[sop][3]
            assert dcmread(stored).PixelData == dcmread(name).PixelData
        assert list((restarted.storage / ".incoming").iterdir()) == []
        for path in restarted.storage.rglob("*.dcm"):  # every file in the tree is whole
            assert sha256_of(path)[:12] == path.stem.rsplit("-", 1)[1]
        # the restarted node queues what the killed one had not published yet
        assert _wait(lambda: _statuses(restarted) <= {"queued"})
        assert redis_server.llen("score") >= len(acknowledged)
        # and the modality can resend the rest
        rest = [p for p in files if str(p) not in acknowledged]
        assert len(storescu(restarted.port, rest).succeeded) == len(rest)
        assert len(restarted.instances()) == 60
    finally:
        restarted.stop()
