"""The store path in-process: files and rows stay in step on every outcome, nothing escapes."""

from __future__ import annotations

import logging
import shutil
import types
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.models import Instance
from db.session import make_engine, make_session_factory
from dicom_node.deflate import InflateError, inflate_stream
from dicom_node.filters import TriageRules, Verdict
from dicom_node.handlers import handle_store
from dicom_node.header import StoreRequest, inspect
from dicom_node.ingest import Ingestor
from dicom_node.status import StoreStatus
from dicom_node.storage import InstanceStore
from tests.support import dicomgen


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def broken_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A database without the schema: every write fails as an unavailable database does."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    store = InstanceStore(tmp_path / "storage")
    store.prepare()
    return store


def _ingest(ingestor: Ingestor, source: Path, name: str = "rx.dcm") -> StoreStatus:
    """Hand ``source`` to the ingestor the way pynetdicom does: a file in the incoming folder."""
    received = ingestor.store.incoming / name
    shutil.copyfile(source, received)
    meta = dcmread(source, stop_before_pixels=True).file_meta
    return ingestor.ingest(received, "MODALITY", str(meta.MediaStorageSOPClassUID),
                           str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))


def _tree(store: InstanceStore) -> set[str]:
    return {str(p) for p in store.root.rglob("*.dcm") if store.incoming not in p.parents}


def _paths(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Instance.file_path)))


def test_failed_record_keeps_a_file_a_committed_row_references(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session],
    broken_sessions: sessionmaker[Session],
) -> None:
    good = Ingestor(store, sessions, TriageRules(), lambda _: None)
    broken = Ingestor(store, broken_sessions, TriageRules(), lambda _: None)
    first = dicomgen.write(dicomgen.radiograph(), tmp_path / "first.dcm")
    assert _ingest(good, first) is StoreStatus.SUCCESS
    # the same content again while the database fails: its file is the recorded one, it stays
    assert _ingest(broken, first) is StoreStatus.OUT_OF_RESOURCES_DATABASE
    assert _tree(store) == _paths(sessions) and len(_tree(store)) == 1
    # a new instance while the database fails: no file without a row
    other = dicomgen.write(dicomgen.radiograph(), tmp_path / "other.dcm")
    assert _ingest(broken, other) is StoreStatus.OUT_OF_RESOURCES_DATABASE
    assert _tree(store) == _paths(sessions)
    assert list(store.incoming.iterdir()) == []


def test_resends_leave_exactly_the_referenced_file(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session],
) -> None:
    ingestor = Ingestor(store, sessions, TriageRules(), lambda _: None)
    original = dicomgen.radiograph()
    changed = dicomgen.radiograph(sop_uid=str(original.SOPInstanceUID), seed=7,
                                  study_uid=str(original.StudyInstanceUID),
                                  series_uid=str(original.SeriesInstanceUID))
    first = dicomgen.write(original, tmp_path / "a.dcm")
    second = dicomgen.write(changed, tmp_path / "b.dcm")
    for source in (first, first, second, first, second, second):
        assert _ingest(ingestor, source) is StoreStatus.SUCCESS
        assert _tree(store) == _paths(sessions) and len(_tree(store)) == 1
    with sessions() as session:
        assert session.scalars(select(Instance.receive_count)).one() == 6


class _BrokenRules(TriageRules):
    """Rules whose evaluation fails the way a bug would, quoting patient data."""

    def evaluate(self, attributes: object) -> Verdict:
        raise RuntimeError(f"{dicomgen.PATIENT_NAME} broke the rules")


def test_unexpected_error_is_named_logged_without_phi_and_cleaned_up(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingestor = Ingestor(store, sessions, _BrokenRules(), lambda _: None)
    source = dicomgen.write(dicomgen.radiograph(), tmp_path / "x.dcm")
    with caplog.at_level(logging.INFO):
        status = _ingest(ingestor, source)
    assert status is StoreStatus.CANNOT_UNDERSTAND_UNEXPECTED
    assert "unexpected RuntimeError" in caplog.text and "SECRET" not in caplog.text
    assert list(store.incoming.iterdir()) == [] and _tree(store) == set()


def test_handle_store_never_raises(tmp_path: Path, store: InstanceStore,
                                   sessions: sessionmaker[Session]) -> None:
    received = store.incoming / "rx.dcm"
    received.write_bytes(b"patient data")
    event = types.SimpleNamespace(request=types.SimpleNamespace(_dataset_path=received))
    ingestor = Ingestor(store, sessions, TriageRules(), lambda _: None)
    assert handle_store(event, ingestor) == StoreStatus.CANNOT_UNDERSTAND_UNEXPECTED  # type: ignore[arg-type]
    assert not received.exists()


def test_values_over_4096_bytes_are_read_inside_the_check(tmp_path: Path) -> None:
    dataset = dicomgen.radiograph()
    dataset.PatientName = "N" * 9000
    dataset.ViewPosition = "PA" + " " * 6000
    path = dicomgen.write(dataset, tmp_path / "big.dcm")
    request = StoreRequest(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                           str(dataset.file_meta.TransferSyntaxUID))
    header = inspect(path, request, keywords=("ViewPosition",))
    path.unlink()  # nothing is read from the file after the check
    assert header.study.patient_name == "N" * 324
    assert TriageRules().evaluate(header.attributes).candidate


def test_deflated_pixel_length_is_checked_in_the_inflated_data(tmp_path: Path) -> None:
    dataset = dicomgen.radiograph(rows=512, columns=512)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = dicomgen.write(dataset, tmp_path / "deflated.dcm")
    assert path.stat().st_size < 512 * 512 * 2  # Pixel Data ends past the compressed size
    request = StoreRequest(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                           DeflatedExplicitVRLittleEndian)
    assert inspect(path, request).sop_instance_uid == dataset.SOPInstanceUID
    assert list(tmp_path.glob("*.inflated")) == []  # the scratch copy is gone


def _deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def test_inflate_is_bounded_and_strict() -> None:
    data = bytes(5 * 1024 * 1024)
    out = BytesIO()
    assert inflate_stream(BytesIO(_deflate(data)), out, limit=len(data)) == len(data)
    assert out.getvalue() == data
    with pytest.raises(InflateError, match="more than") as too_large:
        inflate_stream(BytesIO(_deflate(data)), BytesIO(), limit=len(data) - 1)
    assert too_large.value.too_large
    with pytest.raises(InflateError, match="truncated"):
        inflate_stream(BytesIO(_deflate(data)[:-20]), BytesIO(), limit=len(data))
    with pytest.raises(InflateError, match="corrupt"):
        inflate_stream(BytesIO(b"\xff" * 100), BytesIO(), limit=len(data))
