"""Durable storage: rename into place, no partial files, space floor."""

from __future__ import annotations

import hashlib
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
