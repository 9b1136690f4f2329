"""Every transfer syntax the node accepts is received, stored and decoded by the scoring path.

Each syntax is sent on an association that proposes it alone (pynetdicom as the SCU, the file's
own bytes), so acceptance is tested one syntax at a time; dcmtk's storescu sends a few as a
modality would. The stored files then go through ``training.preprocessing`` (the worker's decode
path), and one end-to-end run through node, Redis and a worker scores an RLE and an HTJ2K image
and records an undecodable one as ``failed`` with its reason, with JSON logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    UID,
    HTJ2KLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from common.dicom_ids import IMPLEMENTATION_CLASS_UID, implementation_version_name
from dicom_node.ae import ACCEPTED_TRANSFER_SYNTAXES
from dicom_node.status import StoreStatus
from tests.support import dicomgen, syntaxes
from tests.support.dcmtk import storescu
from tests.support.node import MODALITY_AE, NODE_AE, NodeProcess
from tests.support.servers import RedisServer
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query, wait_until
from training.preprocessing import load_unit_image

PHI = (dicomgen.PATIENT_NAME, dicomgen.PATIENT_ID, "TESTPATIENT", "SECRET")


def send_alone(port: int, path: Path, calling_ae: str = MODALITY_AE) -> int | None:
    """C-STORE ``path`` on an association proposing only its own transfer syntax."""
    ds = dcmread(path, stop_before_pixels=True)
    scu = AE(ae_title=calling_ae)
    scu.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = scu.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(path)  # the file's bytes as they are, not re-encoded
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def test_the_node_accepts_exactly_the_generated_syntaxes() -> None:
    assert set(ACCEPTED_TRANSFER_SYNTAXES) == set(syntaxes.ENCODERS)


def test_every_syntax_is_stored_and_decodes(node: NodeProcess, tmp_path: Path) -> None:
    files = {uid: syntaxes.write_in(uid, tmp_path / "sent" / f"{uid}.dcm", seed=i)
             for i, uid in enumerate(syntaxes.ENCODERS)}
    for uid, path in files.items():
        assert send_alone(node.port, path) == StoreStatus.SUCCESS, f"{uid.name}\n{node.log()}"
    # dcmtk's storescu as a modality would send (it proposes one family per association).
    dcmtk = [syntaxes.write_in(uid, tmp_path / "dcmtk" / f"{uid}.dcm", seed=99 + i)
             for i, uid in enumerate((RLELossless, JPEGLSNearLossless))]
    assert len(storescu(node.port, dcmtk).succeeded) == 2

    stored = node.instances()
    for uid, path in files.items():
        sop_uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        status, reason, file_path = stored[sop_uid][:3]
        assert status in ("received", "queued"), (uid.name, status, reason)
        kept = dcmread(str(file_path), stop_before_pixels=True)
        assert kept.file_meta.TransferSyntaxUID == uid
        assert kept.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert kept.file_meta.ImplementationVersionName == implementation_version_name()
        # The worker's decode path on the stored file, against the uncompressed original.
        decoded = load_unit_image(Path(str(file_path)), size=64)
        bits = syntaxes.ENCODERS[uid][0]
        original = load_unit_image(syntaxes.radiograph(bits=bits, seed=0), size=64)
        assert decoded.shape == (64, 64), uid.name
        assert float(np.abs(decoded - original).max()) < 0.01, uid.name
    log = node.log()
    assert not [word for word in PHI if word in log]


def _corrupt_htj2k(path: Path) -> Path:
    """An HTJ2K-labelled instance whose codestream is cut short: accepted, not decodable."""
    ds = syntaxes.radiograph(sop_uid=generate_uid())
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    return dicomgen.write(ds, path)


@pytest.fixture
def redis_for_stack(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_node_and_worker_score_rle_and_htj2k_with_json_logs(
    db_url: str, tmp_path: Path, redis_for_stack: RedisServer
) -> None:
    json_logs = {"TRIAGE_LOG_FORMAT": "json"}
    node = NodeProcess(tmp_path / "node", db_url, redis_for_stack.url, env=json_logs).start()
    model = build_ensemble(tmp_path / "model")
    worker = WorkerProcess(tmp_path / "worker", db_url=db_url, broker_url=redis_for_stack.url,
                           model_dir=model, storage_dir=node.storage, env=json_logs)
    try:
        worker.start()
        study = generate_uid()
        sent: dict[UID, Path] = {
            uid: syntaxes.write_in(uid, tmp_path / f"{uid}.dcm", study_uid=study, seed=i)
            for i, uid in enumerate((RLELossless, HTJ2KLossless, HTJ2K))
        }
        broken = _corrupt_htj2k(tmp_path / "broken.dcm")
        for path in (*sent.values(), broken):
            assert send_alone(node.port, path) == StoreStatus.SUCCESS, node.log()

        def settled() -> bool:
            rows = query(db_url, "SELECT status FROM instance")
            return len(rows) == 4 and all(r[0] in ("scored", "failed") for r in rows)

        wait_until(settled, 120, "all four instances scored or failed",
                   lambda: node.log()[-3000:] + worker.log()[-6000:])
        rows = {str(r[0]): (r[1], r[2]) for r in query(
            db_url, "SELECT sop_instance_uid, status, status_reason FROM instance")}
        for uid, path in sent.items():
            sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert rows[sop][0] == "scored", (uid.name, rows[sop])
        status, reason = rows[str(dcmread(broken, stop_before_pixels=True).SOPInstanceUID)]
        assert status == "failed" and "cannot decode" in str(reason)
        assert query(db_url, "SELECT count(*) FROM score")[0][0] == 3
    finally:
        worker.stop()
        node.stop()

    entries = [json.loads(line) for log in (node.log(), worker.log())
               for line in log.splitlines() if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e.get("study_uid") == study for e in entries)
    assert any(e.get("task_id") and e.get("task") for e in entries)
    everything = node.log() + worker.log()
    assert not [word for word in PHI if word in everything]

