"""Storage Commitment against real peers: Orthanc (its report comes back to a node process on a
new association), an SCP that reports on the request's own association, one that never
reports, and dcmtk's storescp, which does not offer Storage Commitment at all."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from common.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    ActionStatus,
    EventType,
)
from db.models import CommitmentState, Delivery, DeliveryState
from db.session import make_engine, make_session_factory
from tests.delivery.conftest import CALLING_AE
from tests.support.deliveries import add_sent_delivery
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer, free_port
from worker.deliver.channels import channel_sender, commitment_hook
from worker.deliver.commitment import request_commitment, request_commitment_for_file
from worker.deliver.cstore import OutcomeKind, Timeouts, send_file
from worker.deliver.delivery import deliver_report
from worker.deliver.destinations import Destination
from worker.runtime import delivery_options
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration
FAST = Timeouts(connect=3, acse=5, dimse=5, network=10)
ORTHANC_AE = "ORTHANC"
COMMITMENT_TIMEOUT_S = 3  # the node's TRIAGE_COMMITMENT_TIMEOUT_S here
WAIT_S = 60.0  # how long a test waits for something to happen (never asserted)


@dataclass
class Site:
    """A node process, an Orthanc that knows where to reach it, and the shared database."""

    node: NodeProcess
    orthanc: OrthancServer
    sessions: sessionmaker[Session]

    @property
    def pacs(self) -> Destination:
        return Destination(ORTHANC_AE, "127.0.0.1", self.orthanc.dicom_port, commit=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The node admits Orthanc's AE title; Orthanc sends its reports to the node's port."""
    root = tmp_path_factory.mktemp("commitment")
    db_url = f"sqlite:///{root / 'triage.db'}"
    node = NodeProcess(root / "node", db_url, "filesystem://", env={
        "TRIAGE_ALLOWED_AETS": f"{ORTHANC_AE},ECHOSCU",
        "TRIAGE_COMMITMENT_TIMEOUT_S": str(COMMITMENT_TIMEOUT_S),
    }).start()
    orthanc = OrthancServer(root / "orthanc", aet=ORTHANC_AE, allowed_callers=(CALLING_AE,),
                            modality_ports={CALLING_AE: node.port})
    engine = make_engine(db_url)
    try:
        with orthanc:
            yield Site(node, orthanc, make_session_factory(engine))
    finally:
        engine.dispose()
        node.stop()


def commitment_of(sessions: sessionmaker[Session], delivery_id: int) -> tuple[str | None, str]:
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return (None if delivery.commitment is None else delivery.commitment.value,
                delivery.commitment_error or "")


def wait_for_commitment(site_sessions: sessionmaker[Session], delivery_id: int,
                        wanted: CommitmentState, logs: Callable[[], str]) -> str:
    """Wait until the delivery's commitment is ``wanted``; its error text."""
    deadline = time.monotonic() + WAIT_S
    state, error = commitment_of(site_sessions, delivery_id)
    while state != wanted.value and time.monotonic() < deadline:
        time.sleep(0.2)
        state, error = commitment_of(site_sessions, delivery_id)
    assert state == wanted.value, f"commitment is {state} ({error}); node log:\n{logs()[-3000:]}"
    return error


def listed_deliveries(site: Site) -> str:
    """What ``cxr-triage deliveries`` prints (a process of its own, as an admin runs it)."""
    listing = subprocess.run([sys.executable, "-m", "cxr_triage", "deliveries"],
                             env=site.node.env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    return listing.stdout


def test_orthanc_commits_the_sr_on_a_new_association(site: Site, sr_file: Path) -> None:
    sent = send_file(sr_file, site.pacs, calling_ae=CALLING_AE, timeouts=FAST)
    assert sent.kind is OutcomeKind.SENT, sent.reason
    delivery_id = add_sent_delivery(site.sessions, sr_file, site.pacs.label)

    state = request_commitment_for_file(site.sessions, delivery_id, site.pacs, sr_file,
                                        calling_ae=CALLING_AE, timeout_s=0.5, timeouts=FAST)

    assert state is not CommitmentState.FAILED, commitment_of(site.sessions, delivery_id)
    assert wait_for_commitment(site.sessions, delivery_id, CommitmentState.COMMITTED,
                               site.node.log) == ""
    assert f"-> {site.pacs.label}: storage committed (report from {ORTHANC_AE}" in site.node.log()
    assert f"{site.pacs.label}\tsr\tsent\tcommitted\t" in listed_deliveries(site)


def test_delivery_to_a_commit_destination_ends_committed(site: Site, sr_file: Path) -> None:
    """The worker's path: deliver_report C-STOREs, its hook requests commitment, the node
    records Orthanc's report."""
    destination = site.pacs
    delivery_id = add_sent_delivery(site.sessions, sr_file, destination.label,
                                    state=DeliveryState.PENDING)
    with site.sessions() as session:
        report_id = session.get(Delivery, delivery_id).report_id  # type: ignore[union-attr]
    options = replace(delivery_options(WorkerSettings()), calling_ae=CALLING_AE,
                      connect_timeout_s=3, timeout_s=10, commitment_wait_s=0.2)

    result = deliver_report(site.sessions, report_id, destination.label,
                            destinations={destination.label: destination},
                            send=channel_sender(site.sessions, options), options=options,
                            commit=commitment_hook(site.sessions, options))

    assert result.state is DeliveryState.SENT, result.reason
    wait_for_commitment(site.sessions, delivery_id, CommitmentState.COMMITTED, site.node.log)
    assert site.orthanc.find_instance(pydicom.dcmread(sr_file).SOPInstanceUID) is not None


def test_orthanc_reports_an_instance_it_lacks_as_failed(site: Site, sr_file: Path) -> None:
    # The SR is recorded as sent but never reached Orthanc.
    delivery_id = add_sent_delivery(site.sessions, sr_file, site.pacs.label)
    sr = pydicom.dcmread(sr_file, stop_before_pixels=True)

    request_commitment(site.sessions, delivery_id, site.pacs, str(sr.SOPClassUID),
                       str(sr.SOPInstanceUID), calling_ae=CALLING_AE, timeout_s=0.5,
                       timeouts=FAST)

    error = wait_for_commitment(site.sessions, delivery_id, CommitmentState.FAILED,
                                site.node.log)
    assert f"did not commit SOP Instance {sr.SOPInstanceUID}" in error
    assert "0x0112 (NO_SUCH_OBJECT_INSTANCE)" in error


class CommitmentScp:
    """An in-process Storage Commitment SCP: accepts every N-ACTION and then reports on the
    same association (``report_on_association``), or never."""

    def __init__(self, *, report_on_association: bool) -> None:
        self.port = free_port()
        self.report_on_association = report_on_association
        self.requests: list[Dataset] = []
        ae = AE("COMMIT_SCP")
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_N_ACTION, self._on_action)])
        assert server is not None
        self._server = server

    def _on_action(self, event: Event) -> tuple[int, None]:
        request = event.action_information
        self.requests.append(request)
        if self.report_on_association:
            threading.Thread(target=self._report, args=(event, request), daemon=True).start()
        return 0x0000, None

    @staticmethod
    def _report(event: Event, request: Dataset) -> None:
        time.sleep(0.1)  # after the N-ACTION response has gone
        info = Dataset()
        info.TransactionUID = request.TransactionUID
        info.ReferencedSOPSequence = request.ReferencedSOPSequence
        event.assoc.send_n_event_report(info, EventType.SUCCESSFUL, STORAGE_COMMITMENT_PUSH_MODEL,
                                        STORAGE_COMMITMENT_INSTANCE)

    def destination(self) -> Destination:
        return Destination("COMMIT_SCP", "127.0.0.1", self.port, commit=True)

    def shutdown(self) -> None:
        self._server.shutdown()


@pytest.fixture
def commitment_scp(request: pytest.FixtureRequest) -> Iterator[CommitmentScp]:
    scp = CommitmentScp(report_on_association=bool(request.param))
    yield scp
    scp.shutdown()


@pytest.mark.parametrize("commitment_scp", [True], indirect=True)
def test_report_on_the_requests_association_is_recorded(site: Site, sr_file: Path,
                                                        commitment_scp: CommitmentScp) -> None:
    destination = commitment_scp.destination()
    delivery_id = add_sent_delivery(site.sessions, sr_file, destination.label)

    state = request_commitment_for_file(site.sessions, delivery_id, destination, sr_file,
                                        calling_ae=CALLING_AE, timeout_s=WAIT_S, timeouts=FAST)

    assert state is CommitmentState.COMMITTED, commitment_of(site.sessions, delivery_id)
    (request,) = commitment_scp.requests
    (item,) = request.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == pydicom.dcmread(sr_file).SOPInstanceUID


@pytest.mark.parametrize("commitment_scp", [False], indirect=True)
def test_destination_that_never_reports_times_out(site: Site, sr_file: Path,
                                                  commitment_scp: CommitmentScp) -> None:
    destination = commitment_scp.destination()
    delivery_id = add_sent_delivery(site.sessions, sr_file, destination.label)

    state = request_commitment_for_file(site.sessions, delivery_id, destination, sr_file,
                                        calling_ae=CALLING_AE, timeout_s=0.2, timeouts=FAST)

    assert state is CommitmentState.REQUESTED
    error = wait_for_commitment(site.sessions, delivery_id, CommitmentState.TIMED_OUT,
                                site.node.log)
    assert f"no N-EVENT-REPORT from {destination.label} within {COMMITMENT_TIMEOUT_S} s" in error
    assert f"-> {destination.label}: storage commitment timed out" in site.node.log()
    assert f"{destination.label}\tsr\tsent\ttimed_out\t" in listed_deliveries(site)


def test_destination_without_storage_commitment_is_failed(site: Site, sr_file: Path,
                                                          storescp: tuple[int, Path]) -> None:
    port, _ = storescp
    destination = Destination("STORESCP", "127.0.0.1", port, commit=True)
    delivery_id = add_sent_delivery(site.sessions, sr_file, destination.label)

    state = request_commitment_for_file(site.sessions, delivery_id, destination, sr_file,
                                        calling_ae=CALLING_AE, timeout_s=0.2, timeouts=FAST)

    assert state is CommitmentState.FAILED
    _, error = commitment_of(site.sessions, delivery_id)
    assert destination.label in error and "Storage Commitment" in error


def test_the_node_commits_nothing_itself(site: Site) -> None:
    """A peer asking the node for Storage Commitment (no role selection) gets NO_SUCH_ACTION."""
    ae = AE(ORTHANC_AE)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", site.node.port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    try:
        request = Dataset()
        request.TransactionUID = generate_uid()
        status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH_MODEL,
                                        STORAGE_COMMITMENT_INSTANCE)
    finally:
        assoc.release()
    assert status.Status == ActionStatus.NO_SUCH_ACTION
