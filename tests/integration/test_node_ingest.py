"""The node against dcmtk's storescu/echoscu: real files, many files, duplicates, refusals."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from db.migrate import head_revision
from dicom_node.status import StoreStatus
from dicom_node.storage import sha256_of
from tests.support import dicomgen
from tests.support.dcmtk import echoscu, storescu
from tests.support.node import NodeProcess
from tests.support.rawscu import send_raw, write_raw
from tests.support.servers import RedisServer


def _wait(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _assert_stored(node: NodeProcess, path: Path) -> tuple[object, ...]:
    """The instance is recorded and its stored file holds the dataset that was sent."""
    sent = dcmread(path, force=True)
    row = node.instances()[str(sent.SOPInstanceUID)]
    stored_path = Path(str(row[2]))
    assert stored_path.is_file() and stored_path.is_relative_to(node.storage)
    assert sha256_of(stored_path) == row[3]
    stored = dcmread(stored_path)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    return row


def _no_partial_files(node: NodeProcess) -> None:
    assert list((node.storage / ".incoming").iterdir()) == []


def test_echo_and_calling_ae_allow_list(node: NodeProcess) -> None:
    assert echoscu(node.port, calling_ae="ECHOSCU").returncode == 0
    refused = echoscu(node.port, calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    wrong_called = echoscu(node.port, calling_ae="ECHOSCU", called_ae="SOMEONE_ELSE")
    assert wrong_called.returncode != 0
    assert "INTRUDER" in node.log() and node.echo()


def test_real_files_from_shared_data(node: NodeProcess, shared_dicom: Path,
                                     redis_server: RedisServer) -> None:
    with (shared_dicom / "manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    files = [shared_dicom / row["file"] for row in manifest]
    run = storescu(node.port, files)
    by_file = {row["file"]: row for row in manifest}
    stored = 0
    for path in files:
        row = by_file[path.name]
        status = run.status_of(path)
        if row["sop_class_name"] in ("Secondary Capture Image Storage", "CT Image Storage"):
            assert status is None, f"{path.name} should be refused at negotiation"
            continue
        assert status == 0, f"{path.name}: status {status}\n{run.output[-2000:]}"
        db_row = _assert_stored(node, path)
        stored += 1
        # the hip (Study Description HIP JOINT) and the dental CR (Series Description TEETH)
        expect_skip = row["role"] == "non-chest"
        assert (db_row[0] == "skipped") is expect_skip, (path.name, db_row)
        if expect_skip:
            assert str(db_row[1]).startswith("not a chest: ")
    assert stored == 5  # CR/DX in JPEG 2000, JPEG-LS, JPEG lossless and implicit LE
    assert "No presentation context" in run.output  # SC and CT refused at negotiation
    assert _wait(lambda: redis_server.llen("score") == 3)  # every stored non-skipped instance
    _no_partial_files(node)


def test_secondary_capture_when_configured(tmp_path: Path, shared_dicom: Path,
                                           redis_server: RedisServer) -> None:
    node = NodeProcess(tmp_path / "sc", f"sqlite:///{tmp_path / 'sc.db'}", redis_server.url,
                       env={"TRIAGE_ACCEPT_SECONDARY_CAPTURE": "true"}).start()
    try:
        sc_files = sorted(shared_dicom.glob("nhsx_*.dcm")) + sorted(
            shared_dicom.glob("torchxrayvision_*.dcm"))
        run = storescu(node.port, sc_files)
        assert all(run.status_of(path) == 0 for path in sc_files), run.output[-2000:]
        for path in sc_files:
            assert _assert_stored(node, path)[0] in ("received", "queued")
    finally:
        node.stop()


def test_fifty_files_over_one_association_and_resend(node: NodeProcess, tmp_path: Path,
                                                     redis_server: RedisServer) -> None:
    files = dicomgen.write_series(tmp_path / "series", 50)
    run = storescu(node.port, files)
    assert len(run.succeeded) == 50, run.output[-2000:]
    assert run.output.count("Requesting Association") <= 1 or "Association Accepted" in run.output
    assert len(node.instances()) == 50
    for path in files[:5]:
        _assert_stored(node, path)
    assert _wait(lambda: redis_server.llen("score") == 50)
    assert _wait(lambda: {r[0] for r in node.instances().values()} == {"queued"})

    # identical resend: Success, one record, nothing re-queued
    again = storescu(node.port, files[:3])
    assert len(again.succeeded) == 3
    rows = node.instances()
    assert len(rows) == 50
    sop = str(dcmread(files[0]).SOPInstanceUID)
    assert rows[sop][4] == 2
    time.sleep(1.5)
    assert redis_server.llen("score") == 50

    # same SOP Instance UID, different pixels: Success, re-queued; the replaced file is
    # deleted once the row no longer references it (no orphan), the new one is in place
    changed = dicomgen.radiograph(sop_uid=sop, seed=999)
    changed_path = dicomgen.write(changed, tmp_path / "changed.dcm")
    old_path = Path(str(rows[sop][2]))
    assert storescu(node.port, [changed_path]).status_of(changed_path) == 0
    row = node.instances()[sop]
    assert row[2] != str(old_path) and not old_path.exists() and row[4] == 3
    assert sorted(node.storage.rglob(f"{sop}-*.dcm")) == [Path(str(row[2]))]
    assert _wait(lambda: redis_server.llen("score") == 51)
    assert "different content" in node.log()
    _no_partial_files(node)


def test_concurrent_associations(node: NodeProcess, tmp_path: Path) -> None:
    batches = [dicomgen.write_series(tmp_path / f"m{i}", 10, accession=f"ACC{i}")
               for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(lambda files: storescu(node.port, files), batches))
    assert sum(len(run.succeeded) for run in runs) == 60
    assert len(node.instances()) == 60
    assert len(node.rows("SELECT id FROM study")) == 6


def _tree_matches_rows(node: NodeProcess) -> None:
    """Every stored file has a row, every row's file exists and holds the recorded content."""
    rows = node.rows("SELECT file_path, content_sha256 FROM instance")
    on_disk = {str(p) for p in node.storage.rglob("*.dcm") if ".incoming" not in p.parts}
    assert on_disk == {str(row[0]) for row in rows}
    for path, digest in rows:
        assert sha256_of(Path(str(path))) == digest


def test_concurrent_resends_of_the_same_instances(node: NodeProcess, tmp_path: Path) -> None:
    """Six associations at once send the same SOP Instance UIDs, half with other pixels."""
    originals = dicomgen.write_series(tmp_path / "a", 8)
    changed = []
    for index, path in enumerate(originals):
        first = dcmread(path)
        again = dicomgen.radiograph(study_uid=first.StudyInstanceUID, seed=100 + index,
                                    series_uid=first.SeriesInstanceUID,
                                    sop_uid=first.SOPInstanceUID)
        changed.append(dicomgen.write(again, tmp_path / "b" / path.name))
    batches = [originals, changed] * 3
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        runs = list(pool.map(lambda files: storescu(node.port, files), batches))
    assert all(len(run.succeeded) == 8 for run in runs), [run.output[-1500:] for run in runs]
    rows = node.instances()
    assert len(rows) == 8 and {row[4] for row in rows.values()} == {6}
    _tree_matches_rows(node)  # the version no row references was deleted, nothing else
    _no_partial_files(node)


def test_partial_dataset_deleted_when_the_association_aborts(node: NodeProcess,
                                                             tmp_path: Path) -> None:
    big = dicomgen.radiograph(rows=1024, columns=1024)
    encoded = BytesIO()
    target = DicomFileLike(encoded)
    target.is_little_endian, target.is_implicit_VR = True, False
    write_dataset(target, big)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(big.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID = big.SOPClassUID
    request.AffectedSOPInstanceUID = big.SOPInstanceUID
    request.DataSet = BytesIO(encoded.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = int(assoc.accepted_contexts[0].context_id or 1)
    fragments = message.encode_msg(context_id, int(assoc.acceptor.maximum_length or 0))
    for _ in range(3):  # the command and the first part of the dataset, never the rest
        assoc.dul.send_pdu(next(fragments))
    incoming = node.storage / ".incoming"
    assert _wait(lambda: any(incoming.iterdir()), 10), "the node never started receiving"
    assoc.abort()
    assert _wait(lambda: not any(incoming.iterdir()), 10), list(incoming.iterdir())
    assert node.instances() == {} and node.echo()


def test_bad_input_gets_named_status(node: NodeProcess, tmp_path: Path) -> None:
    cr = "1.2.840.10008.5.1.4.1.1.1"
    garbage = write_raw(tmp_path / "garbage.dcm", cr, generate_uid(), b"\xff" * 300)
    assert send_raw(node.port, garbage, cr) == StoreStatus.CANNOT_UNDERSTAND
    # a sequence of undefined length that never ends: the stream was cut
    cut = write_raw(tmp_path / "cut.dcm", cr, generate_uid(),
                    b"\x08\x00\x60\x00CS\x02\x00CR\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
                    + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x10\x00PN\x04\x00ABCD")
    assert send_raw(node.port, cut, cr) == StoreStatus.CANNOT_UNDERSTAND
    # Pixel Data longer than what arrived
    full = dicomgen.radiograph()
    encoded = BytesIO()
    target = DicomFileLike(encoded)
    target.is_little_endian, target.is_implicit_VR = True, False
    write_dataset(target, full)
    truncated = write_raw(tmp_path / "trunc.dcm", cr, str(full.SOPInstanceUID),
                          encoded.getvalue()[:-1000])
    assert send_raw(node.port, truncated, cr) == StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA

    no_pixels = dicomgen.write(dicomgen.radiograph(with_pixels=False), tmp_path / "nopix.dcm")
    assert storescu(node.port, [no_pixels]).status_of(no_pixels) == (
        StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA)

    traversal = dicomgen.radiograph(study_uid="1.2.3")
    traversal.StudyInstanceUID = "../../../../tmp/evil"
    evil = dicomgen.write(traversal, tmp_path / "evil.dcm")
    assert send_raw(node.port, evil, cr) == StoreStatus.CANNOT_UNDERSTAND_INVALID_UID

    no_study = dicomgen.radiograph()
    del no_study.StudyInstanceUID
    missing = dicomgen.write(no_study, tmp_path / "nostudy.dcm")
    assert storescu(node.port, [missing]).status_of(missing) == (
        StoreStatus.CANNOT_UNDERSTAND_INVALID_UID)

    assert node.instances() == {}
    assert [p for p in node.storage.rglob("*") if p.is_file()] == []
    log = node.log()
    assert "0xC000 CANNOT_UNDERSTAND" in log and "StudyInstanceUID is missing" in log
    # the association and the node keep working
    ok = dicomgen.write(dicomgen.radiograph(), tmp_path / "ok.dcm")
    assert storescu(node.port, [ok]).status_of(ok) == 0


def test_no_patient_identifiers_in_logs(node: NodeProcess, tmp_path: Path) -> None:
    files = dicomgen.write_series(tmp_path / "phi", 3)
    files.append(dicomgen.write(dicomgen.radiograph(view="LL"), tmp_path / "lat.dcm"))
    files.append(dicomgen.write(dicomgen.radiograph(with_pixels=False), tmp_path / "np.dcm"))
    storescu(node.port, files)
    log = node.log()
    assert "stored" in log
    assert dicomgen.PATIENT_ID not in log and "SECRET" not in log


def test_cli_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    script = str(Path(sys.executable).parent / "cxr-triage")
    proc = subprocess.run([script, "db", "--db-url", url, "upgrade"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"revision {head_revision()}" in proc.stdout
