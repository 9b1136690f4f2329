"""Our Implementation Class UID and version name: on the node, on the SR sender, in file meta."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from common.dicom_ids import IMPLEMENTATION_CLASS_UID, implementation_version_name
from dicom_node.ae import build_ae
from dicom_node.settings import NodeSettings
from tests.support.servers import free_port
from worker.deliver.cstore import send_file
from worker.deliver.destinations import Destination
from worker.report.sr import write_sr


def test_the_uid_is_ours_and_valid() -> None:
    uid = UID(IMPLEMENTATION_CLASS_UID)
    assert uid.is_valid and uid.startswith("2.25.") and len(uid) <= 64
    name = implementation_version_name()
    assert name.startswith("CXR_TRIAGE_") and 1 <= len(name) <= 16


def test_the_node_announces_it_on_the_wire(tmp_path: Path) -> None:
    port = free_port()
    node = build_ae(NodeSettings(storage_dir=tmp_path, allow_any_aet=True))
    server = node.start_server(("127.0.0.1", port), block=False)
    try:
        scu = AE(ae_title="PEER")
        scu.add_requested_context("1.2.840.10008.1.1")
        assoc = scu.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
        assert assoc.is_established
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == implementation_version_name()
        assoc.release()
    finally:
        server.shutdown()


def _sr(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    return write_sr(ds, path)


def test_written_srs_and_the_sr_sender_carry_it(tmp_path: Path) -> None:
    path = _sr(tmp_path / "report.dcm")
    meta = dcmread(path).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == implementation_version_name()

    seen: dict[str, str] = {}
    done = threading.Event()

    def requested(event: evt.Event) -> None:
        seen["uid"] = str(event.assoc.requestor.implementation_class_uid)
        seen["name"] = str(event.assoc.requestor.implementation_version_name)
        done.set()

    port = free_port()
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
    server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, requested), (evt.EVT_C_STORE, lambda _e: 0x0000)])
    try:
        outcome = send_file(path, Destination(ae_title="PACS", host="127.0.0.1", port=port),
                            calling_ae="CXR_TRIAGE")
    finally:
        server.shutdown()
    assert done.is_set(), outcome
    assert seen == {"uid": IMPLEMENTATION_CLASS_UID, "name": implementation_version_name()}
    assert outcome.kind.value == "sent", outcome
