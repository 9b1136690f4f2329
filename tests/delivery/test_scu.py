"""Delivering the SR: real Orthanc, dcmtk storescp, and an in-process SCP with chosen statuses."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event

from tests.delivery.conftest import CALLING_AE, require_tool
from tests.support.orthanc import OrthancServer, free_port
from worker.deliver.cstore import (
    DeliveryError,
    OutcomeKind,
    StoreReplyStatus,
    Timeouts,
    classify_status,
    named_status,
    send_file,
)
from worker.deliver.destinations import Destination, DestinationError
from worker.report import codes as sr_codes

pytestmark = pytest.mark.integration
FAST = Timeouts(connect=3, acse=5, dimse=5, network=10)
# Statuses inside a class (PS3.4 B.2.3): the class name plus a sub-code.
OUT_OF_RESOURCES_SUBCODE = StoreReplyStatus.REFUSED_OUT_OF_RESOURCES | 0x01
CANNOT_UNDERSTAND_SUBCODE = StoreReplyStatus.ERROR_CANNOT_UNDERSTAND | 0x123
WARNING_VENDOR_SUBCODE = StoreReplyStatus.WARNING_COERCION_OF_DATA_ELEMENTS | 0x42
UNKNOWN_FAILURE = 0xFD00  # no meaning in PS3.4 or PS3.7


def _orthanc_dest(orthanc: OrthancServer, **kwargs: object) -> Destination:
    return Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port, **kwargs)  # type: ignore[arg-type]


def test_sent_to_orthanc_and_stored(orthanc: OrthancServer, sr_file: Path) -> None:
    outcome = send_file(sr_file, _orthanc_dest(orthanc), calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.SENT, outcome.reason
    assert outcome.status == StoreReplyStatus.SUCCESS
    assert outcome.status_name == "SUCCESS"
    sop_uid = pydicom.dcmread(sr_file).SOPInstanceUID
    instance_id = orthanc.find_instance(sop_uid)
    assert instance_id in orthanc.instances()
    tags = orthanc.get_instance_tags(instance_id)
    assert tags["SOPInstanceUID"] == sop_uid
    assert tags["Modality"] == "SR"
    assert tags["VerificationFlag"] == "UNVERIFIED"
    content = json.dumps(tags["ContentSequence"])
    assert sr_codes.COVID19.value in content
    assert sr_codes.SUSPECTED.value in content
    assert sr_codes.HIGH_PRIORITY.value in content


def test_orthanc_down_then_back(orthanc: OrthancServer, sr_file: Path) -> None:
    destination = _orthanc_dest(orthanc)
    orthanc.stop()
    down = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    assert down.kind is OutcomeKind.RETRY
    assert down.status is None
    orthanc.start()
    back = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    assert back.kind is OutcomeKind.SENT, back.reason
    assert len(orthanc.instances()) == 1


def test_orthanc_killed_is_retry(orthanc: OrthancServer, sr_file: Path) -> None:
    orthanc.kill()
    outcome = send_file(sr_file, _orthanc_dest(orthanc), calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.RETRY


def test_wrong_called_ae_is_failed(orthanc: OrthancServer, sr_file: Path) -> None:
    destination = Destination("NOT_ORTHANC", "127.0.0.1", orthanc.dicom_port)
    outcome = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.FAILED
    assert "Called AE title not recognised" in outcome.reason
    assert orthanc.instances() == []


def test_unlisted_calling_ae_is_retry(orthanc: OrthancServer, sr_file: Path) -> None:
    # Orthanc accepts the association, then aborts on the C-STORE; an abort
    # can't be told from a crash, so the retry budget has to end it.
    outcome = send_file(sr_file, _orthanc_dest(orthanc), calling_ae="STRANGER", timeouts=FAST)
    assert outcome.kind is OutcomeKind.RETRY
    assert orthanc.instances() == []


def test_nothing_listening_is_retry(sr_file: Path) -> None:
    destination = Destination("PACS", "127.0.0.1", free_port())
    outcome = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.RETRY
    assert "no association" in outcome.reason


def test_shadow_destination_is_not_contacted(orthanc: OrthancServer, sr_file: Path) -> None:
    destination = _orthanc_dest(orthanc, shadow=True)
    outcome = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.SHADOW
    assert outcome.destination == destination.label
    assert orthanc.instances() == []


def test_storescp_receives_file(storescp: tuple[int, Path], sr_file: Path) -> None:
    port, out = storescp
    outcome = send_file(sr_file, Destination("STORESCP", "127.0.0.1", port),
                        calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.SENT, outcome.reason
    (received,) = list(out.iterdir())
    assert pydicom.dcmread(received).SOPInstanceUID == pydicom.dcmread(sr_file).SOPInstanceUID


def test_storescp_refusing_association_is_failed(tmp_path: Path, sr_file: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "--refuse", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    destination = Destination("STORESCP", "127.0.0.1", port)
    try:
        # No TCP probe for readiness: a refusing storescp can trip over it.
        deadline = time.monotonic() + 20
        outcome = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
        while outcome.kind is OutcomeKind.RETRY and time.monotonic() < deadline:
            time.sleep(0.2)
            outcome = send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
    finally:
        proc.terminate()
        proc.wait(10)
    assert outcome.kind is OutcomeKind.FAILED, outcome.reason
    assert "Rejected Permanent" in outcome.reason


@contextmanager
def store_scp(
    reply: Callable[[Event], int],
    sop_classes: tuple[str, ...] = (Comprehensive3DSRStorage,),
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[int]:
    """An in-process pynetdicom SCP whose C-STORE handler returns ``reply(event)``."""

    def handle_store(event: Event, reply: Callable[[Event], int]) -> int:
        """Returns whatever status the test chose."""
        return reply(event)

    ae = AE(ae_title="FAKE_PACS")
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ssl_context,
                             evt_handlers=[(evt.EVT_C_STORE, handle_store, [reply])])
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (StoreReplyStatus.SUCCESS, OutcomeKind.SENT),
        (StoreReplyStatus.WARNING_COERCION_OF_DATA_ELEMENTS, OutcomeKind.SENT),
        (StoreReplyStatus.WARNING_ELEMENTS_DISCARDED, OutcomeKind.SENT),
        (StoreReplyStatus.REFUSED_OUT_OF_RESOURCES, OutcomeKind.RETRY),
        (OUT_OF_RESOURCES_SUBCODE, OutcomeKind.RETRY),
        (StoreReplyStatus.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS, OutcomeKind.FAILED),
        (StoreReplyStatus.ERROR_CANNOT_UNDERSTAND, OutcomeKind.FAILED),
        (CANNOT_UNDERSTAND_SUBCODE, OutcomeKind.FAILED),
        (StoreReplyStatus.SOP_CLASS_NOT_SUPPORTED, OutcomeKind.FAILED),
    ],
)
def test_peer_status_is_classified(sr_file: Path, status: int, kind: OutcomeKind) -> None:
    with store_scp(lambda event: status) as port:
        outcome = send_file(sr_file, Destination("FAKE_PACS", "127.0.0.1", port),
                            calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is kind, outcome.reason
    assert outcome.status == status
    assert outcome.status_name is not None and outcome.status_name in outcome.reason
    warned = kind is OutcomeKind.SENT and status != StoreReplyStatus.SUCCESS
    assert outcome.warning == (outcome.reason if warned else "")  # kept on the sent delivery


def test_no_reply_in_time_is_retry(sr_file: Path) -> None:
    def slow(event: Event) -> int:
        time.sleep(3)
        return StoreReplyStatus.SUCCESS

    with store_scp(slow) as port:
        outcome = send_file(sr_file, Destination("FAKE_PACS", "127.0.0.1", port),
                            calling_ae=CALLING_AE, timeouts=Timeouts(dimse=1, network=10))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.status is None


def test_peer_without_sr_storage_is_failed(sr_file: Path) -> None:
    with store_scp(lambda event: StoreReplyStatus.SUCCESS,
                   sop_classes=(ComputedRadiographyImageStorage,)) as port:
        outcome = send_file(sr_file, Destination("FAKE_PACS", "127.0.0.1", port),
                            calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.FAILED
    assert "presentation context" in outcome.reason


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (StoreReplyStatus.SUCCESS, OutcomeKind.SENT),
        (WARNING_VENDOR_SUBCODE, OutcomeKind.SENT),
        (StoreReplyStatus.WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS, OutcomeKind.SENT),
        (StoreReplyStatus.DUPLICATE_SOP_INSTANCE, OutcomeKind.SENT),
        (StoreReplyStatus.RESOURCE_LIMITATION, OutcomeKind.RETRY),
        (StoreReplyStatus.PROCESSING_FAILURE, OutcomeKind.RETRY),
        (StoreReplyStatus.NOT_AUTHORIZED, OutcomeKind.FAILED),
        (StoreReplyStatus.MISTYPED_ARGUMENT, OutcomeKind.FAILED),
        (UNKNOWN_FAILURE, OutcomeKind.FAILED),
    ],
)
def test_classify_status(status: int, kind: OutcomeKind) -> None:
    assert classify_status(status) is kind


def test_named_status_covers_classes() -> None:
    assert named_status(OUT_OF_RESOURCES_SUBCODE) is StoreReplyStatus.REFUSED_OUT_OF_RESOURCES
    assert named_status(CANNOT_UNDERSTAND_SUBCODE) is StoreReplyStatus.ERROR_CANNOT_UNDERSTAND
    assert named_status(UNKNOWN_FAILURE) is None


def test_unreadable_file_and_bad_calling_ae(tmp_path: Path, sr_file: Path) -> None:
    destination = Destination("PACS", "127.0.0.1", free_port())
    with pytest.raises(DeliveryError, match="cannot read"):
        send_file(tmp_path / "missing.dcm", destination, calling_ae=CALLING_AE)
    with pytest.raises(DestinationError, match="longer than 16"):
        send_file(sr_file, destination, calling_ae="A_CALLING_AE_TOO_LONG")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1, made with the openssl CLI."""
    cert, key = tmp_path / "peer.pem", tmp_path / "peer.key"
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_destination(sr_file: Path, self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    received: list[str] = []

    def accept(event: Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return StoreReplyStatus.SUCCESS

    with store_scp(accept, ssl_context=server_context) as port:
        trusted = Destination("FAKE_PACS", "127.0.0.1", port, tls=True, ca_file=cert)
        outcome = send_file(sr_file, trusted, calling_ae=CALLING_AE, timeouts=FAST)
        untrusted = Destination("FAKE_PACS", "127.0.0.1", port, tls=True)
        refused = send_file(sr_file, untrusted, calling_ae=CALLING_AE, timeouts=FAST)
        plain = send_file(sr_file, Destination("FAKE_PACS", "127.0.0.1", port),
                          calling_ae=CALLING_AE, timeouts=FAST)
    assert outcome.kind is OutcomeKind.SENT, outcome.reason
    assert received == [pydicom.dcmread(sr_file).SOPInstanceUID]
    assert refused.kind is OutcomeKind.RETRY  # certificate not trusted: no association
    assert plain.kind is OutcomeKind.RETRY


def test_tls_material_missing(tmp_path: Path, sr_file: Path) -> None:
    destination = Destination("PACS", "127.0.0.1", free_port(), tls=True,
                              ca_file=tmp_path / "nope.pem")
    with pytest.raises(DeliveryError, match="TLS material"):
        send_file(sr_file, destination, calling_ae=CALLING_AE, timeouts=FAST)
