"""Durable storage: rename into place, no partial files, space floor."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from dicom_node.storage import DiskFullError, InstanceStore, sha256_of
from dicom_node.uids import InvalidUIDError

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _incoming(store: InstanceStore, data: bytes) -> Path:
    path = store.incoming / "rx.dcm"
    path.write_bytes(data)
    return path


def test_commit_moves_file_into_tree(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage")
    store.prepare()
    source = _incoming(store, b"abc" * 1000)
    digest = sha256_of(source)
    assert digest == hashlib.sha256(b"abc" * 1000).hexdigest()
    final = store.final_path(STUDY, SERIES, SOP, digest)
    stored = store.commit(source, final, digest)
    assert stored.path == tmp_path / "storage" / STUDY / SERIES / f"{SOP}-{digest[:12]}.dcm"
    assert stored.path.read_bytes() == b"abc" * 1000
    assert not source.exists()
    assert stored.existed is False and stored.size_bytes == 3000


def test_discard_keeps_files_that_existed(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.prepare()
    digest = "0" * 64
    final = store.final_path(STUDY, SERIES, SOP, digest)
    first = store.commit(_incoming(store, b"x"), final, digest)
    second = store.commit(_incoming(store, b"x"), final, digest)
    assert second.existed
    store.discard(second)
    assert final.exists()
    store.discard(first)
    assert not final.exists()


def test_prepare_removes_unacknowledged_leftovers(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.prepare()
    (store.incoming / "tmp123.dcm").write_bytes(b"partial")
    store.prepare()
    assert list(store.incoming.iterdir()) == []


def test_space_floor(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_bytes=10**18)
    store.prepare()
    with pytest.raises(DiskFullError, match="TRIAGE_MIN_FREE_BYTES"):
        store.check_space()
    InstanceStore(tmp_path, min_free_bytes=0).check_space()


def test_path_uids_validated(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    with pytest.raises(InvalidUIDError):
        store.final_path("../../etc", SERIES, SOP, "0" * 64)


def test_space_check_counts_the_incoming_file(tmp_path: Path) -> None:
    probe = InstanceStore(tmp_path)
    store = InstanceStore(tmp_path, min_free_bytes=probe.free_bytes() - 512 * 1024 * 1024)
    store.check_space(0)
    with pytest.raises(DiskFullError, match="after 1073741824 more"):
        store.check_space(1024 * 1024 * 1024)


def test_remove_only_inside_the_tree(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage")
    store.prepare()
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x")
    assert not store.remove(outside) and outside.exists()
    partial = _incoming(store, b"x")
    assert not store.remove(partial) and partial.exists()
    digest = "1" * 64
    stored = store.commit(partial, store.final_path(STUDY, SERIES, SOP, digest), digest)
    assert store.remove(stored.path) and not stored.path.exists()
    assert store.remove(stored.path)  # already gone: fine


def test_instance_lock_serialises_one_uid_and_is_dropped_after(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        with store.lock(SOP):
            order.append("second")

    with store.lock(SOP):
        thread = threading.Thread(target=second)
        thread.start()
        with store.lock("1.2.3.4.6"):  # another instance is not held up
            inside.set()
        thread.join(0.2)
        order.append("first")
    thread.join()
    assert inside.is_set() and order == ["first", "second"]
    assert store._locks._locks == {}
