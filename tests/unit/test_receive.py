"""The durable C-STORE path's speed-ups keep it exact (issue 16): the receiving file writes every
byte, the file's fsync runs on the pool and its failure still refuses the instance, and the
enqueuer marks a burst queued in one transaction without publishing anything twice."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlalchemy import select

from db.instances import NewInstance, StudyFacts, record_instance
from db.migrate import upgrade
from db.models import Instance, InstanceStatus
from db.session import make_engine, make_session_factory
from dicom_node.enqueue import Enqueuer
from dicom_node.receive import WRITEBACK_BYTES, ReceivingFile, receiving_files, start_writeback
from dicom_node.storage import DiskFullError, InstanceStore, sha256_of


def test_the_receiving_file_holds_every_byte_written(tmp_path: Path) -> None:
    make = receiving_files(tmp_path)
    handle = make(delete=False, mode="wb", suffix=".dcm")  # as pynetdicom calls it
    assert isinstance(handle, ReceivingFile) and Path(handle.name).parent == tmp_path
    chunks = [os.urandom(n) for n in (128, 4, 5000, WRITEBACK_BYTES + 3, 70_000)]
    for chunk in (chunks[0], bytearray(chunks[1]), memoryview(chunks[2]), *chunks[3:]):
        handle.write(chunk)
        handle.file.flush()
    handle.close()
    assert handle.closed and handle.size == sum(map(len, chunks))
    assert Path(handle.name).read_bytes() == b"".join(chunks)


def test_writeback_is_started_on_linux(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with path.open("wb") as handle:
        handle.write(b"x" * 8192)
        handle.flush()
        assert start_writeback(handle.fileno(), 0, 8192) is (os.uname().sysname == "Linux")


def test_the_file_is_fsynced_on_the_pool_and_committed(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.prepare()
    source = store.incoming / "rx.dcm"
    source.write_bytes(b"abc" * 1000)
    synced = store.sync_soon(source)
    digest = sha256_of(source)  # while the fsync runs
    stored = store.commit(source, store.final_path("1.2", "1.2.3", "1.2.3.4", digest), digest,
                          synced)
    assert synced.done() and stored.path.read_bytes() == b"abc" * 1000
    store.close()


def test_a_failed_fsync_on_the_pool_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.prepare()
    source = store.incoming / "rx.dcm"
    source.write_bytes(b"abc")
    failed: Future[None] = Future()
    failed.set_exception(OSError(errno.ENOSPC, "No space left on device"))
    final = store.final_path("1.2", "1.2.3", "1.2.3.4", "0" * 64)
    with pytest.raises(DiskFullError):
        store.commit(source, final, "0" * 64, failed)
    assert not final.exists() and source.exists()  # the caller deletes the received file


def _instance(sessions: object, number: int) -> int:
    item = NewInstance(
        study=StudyFacts("1.2.9", "ACC", "PID", "NAME", "20261201", "chest"),
        sop_instance_uid=f"1.2.9.{number}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        series_instance_uid="1.2.9.1", calling_ae="MOD", file_path=f"/x/{number}.dcm",
        size_bytes=1, transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64,
        modality="CR", body_part_examined="CHEST", view_position="PA",
        status=InstanceStatus.RECEIVED, status_reason=None)
    with sessions.begin() as session:  # type: ignore[attr-defined]
        return record_instance(session, item).instance_id


def test_a_burst_is_published_at_once_and_marked_queued_together(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    ids = [_instance(sessions, n) for n in range(5)]
    published: list[int] = []
    marks: list[int] = []
    release = threading.Event()

    def publish(instance_id: int) -> None:
        published.append(instance_id)

    enqueuer = Enqueuer(publish, sessions, report_due_s=60)
    original = enqueuer._mark_queued

    def mark(batch: list[int]) -> None:
        marks.append(len(batch))
        original(batch)
        release.set()

    enqueuer._mark_queued = mark  # type: ignore[method-assign]
    for instance_id in ids:  # a burst waiting when the thread looks
        enqueuer.submit(instance_id)
    for instance_id in ids:  # the reconciler still sees them received: handed in again
        enqueuer.submit(instance_id)
    enqueuer.start()
    assert release.wait(30)
    enqueuer.stop()
    engine.dispose()
    assert sorted(published) == ids  # each published once
    assert marks == [len(ids)]  # one transaction marks the burst queued
    with sessions() as session:
        statuses = set(session.scalars(select(Instance.status)))
    assert statuses == {InstanceStatus.QUEUED.value}
