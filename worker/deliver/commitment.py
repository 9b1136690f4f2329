"""Storage Commitment Push Model SCU (PS3.4 J.3): ask a destination to commit what it was sent.

After a C-STORE to a destination with ``;commit``, :func:`request_commitment` records the
delivery's commitment as ``requested`` under a new Transaction UID, then sends the N-ACTION
(Request Storage Commitment, one SOP instance). The N-EVENT-REPORT that settles it comes either
on this association within ``timeout_s`` (recorded here), or later on an association the PACS
opens to the node (``dicom_node.commitment``). The node's reconciler marks commitments without
a report after ``TRIAGE_COMMITMENT_TIMEOUT_S`` as ``timed_out``. docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from common.commitment import (
    REPORT_WAIT_S,
    REQUEST_COMMITMENT_ACTION,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    ActionStatus,
    EventReportStatus,
)
from db.commitments import (
    DeliveryKey,
    answer_event_report,
    find_delivery,
    record_request_failed,
    record_requested,
)
from db.models import CommitmentState
from worker.deliver.cstore import Timeouts, association_outcome, scu_ae, tls_args
from worker.deliver.destinations import Destination
from worker.errors import WorkerError

logger = logging.getLogger(__name__)

_TIMEOUTS = Timeouts()


class CommitmentError(WorkerError):
    """A commitment can't be requested: no such delivery, or the sent file can't be read."""


def commitment_request(transaction_uid: str, sop_class_uid: str,
                       sop_instance_uid: str) -> Dataset:
    """The N-ACTION Action Information: one Referenced SOP Sequence item (PS3.4 J.3.2.1)."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [item]
    return ds


def sent_object(path: Path) -> tuple[str, str]:
    """SOP Class and SOP Instance UID of a sent file, read from its header."""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise CommitmentError(f"cannot read the SOP class and instance of {path}: {exc}") from exc


def handle_event_report(event: Event, sessions: sessionmaker[Session],
                        received: threading.Event) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT on our own association: record the report, then answer.

    Returns one of :class:`~common.commitment.EventReportStatus`: SUCCESS (recorded, or a
    duplicate), NO_SUCH_EVENT_TYPE, INVALID_ARGUMENT_VALUE (unusable or unknown transaction) or
    PROCESSING_FAILURE (the database could not record it).
    """
    request = cast(N_EVENT_REPORT, event.request)
    answer = answer_event_report(sessions, request.EventTypeID, event.event_information)
    if answer.record is None:
        log = (logger.error if answer.status is EventReportStatus.PROCESSING_FAILURE
               else logger.warning)
        log("commitment report on the request's association %s", answer.reason)
    else:
        received.set()
    return int(answer.status), None


def _action_failure(reply: Dataset, label: str) -> str | None:
    """``None`` when the N-ACTION was accepted (0x0000), else why not (PS3.7 10.1.4.1.10)."""
    if "Status" not in reply:
        return f"no N-ACTION response from {label} (timeout or abort)"
    status = int(reply.Status)
    if status == ActionStatus.SUCCESS:
        return None
    comment = reply.get("ErrorComment")
    return (f"{label} refused the storage commitment request: 0x{status:04X}"
            + (f": {comment}" if comment else ""))


_NOT_OFFERED = ("{label} does not accept Storage Commitment Push Model as SCP; enable it on "
                "the PACS or remove ;commit from the destination")


def _no_association(assoc: Association, destination: Destination) -> str:
    """Why the N-ACTION could not be sent: no association, or no commitment context."""
    primitive = assoc.acceptor.primitive
    if primitive is not None and primitive.result == 0 and not assoc.accepted_contexts:
        return _NOT_OFFERED.format(label=destination.label)
    return association_outcome(assoc, destination).reason


def _ask(destination: Destination, request: Dataset, sessions: sessionmaker[Session], *,
         calling_ae: str, timeout_s: float, timeouts: Timeouts) -> str | None:
    """Send the N-ACTION and wait up to ``timeout_s`` for a report on the same association.

    Returns ``None`` when the request was accepted, else the reason it was not.
    """
    ae = scu_ae(calling_ae, timeouts)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    received = threading.Event()
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title,
        tls_args=tls_args(destination),
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle_event_report, [sessions, received])],
    )
    if not assoc.is_established:
        return _no_association(assoc, destination)
    try:
        reply, _ = assoc.send_n_action(request, REQUEST_COMMITMENT_ACTION,
                                       STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE)
        failure = _action_failure(reply, destination.label)
        if failure is None:
            received.wait(timeout_s)  # most PACS answer later, on an association of their own
        return failure
    except (ValueError, RuntimeError) as exc:  # no accepted context for Storage Commitment
        return f"{_NOT_OFFERED.format(label=destination.label)} ({exc})"
    finally:
        if assoc.is_established:
            assoc.release()


def request_commitment(sessions: sessionmaker[Session], delivery: int | DeliveryKey,
                       destination: Destination, sop_class_uid: str, sop_instance_uid: str, *,
                       calling_ae: str, timeout_s: float = REPORT_WAIT_S,
                       timeouts: Timeouts = _TIMEOUTS) -> CommitmentState:
    """Request Storage Commitment of one sent SOP instance and record what is known so far.

    ``delivery`` is the delivery id or (report id, destination label, item). Returns the
    recorded state: ``requested`` (the report will come later), ``committed`` or ``failed``
    (a report came on this association, or the request was refused or not delivered). Never
    raises for network or peer problems; raises ``CommitmentError`` for an unknown delivery or
    invalid UIDs, ``DeliveryError`` for unusable TLS material.
    """
    for uid in (sop_class_uid, sop_instance_uid):
        if not UID(uid).is_valid:
            raise CommitmentError(f"{uid!r} is not a valid UID; nothing to commit")
    transaction_uid = generate_uid()
    with sessions.begin() as session:  # before the N-ACTION: the report may come at once
        row = find_delivery(session, delivery)
        if row is None:
            raise CommitmentError(f"no delivery {delivery!r} recorded; nothing to commit")
        record_requested(session, row, transaction_uid)
        key = (row.report_id, row.destination, row.item.value)
    request = commitment_request(transaction_uid, sop_class_uid, sop_instance_uid)
    failure = _ask(destination, request, sessions, calling_ae=calling_ae, timeout_s=timeout_s,
                   timeouts=timeouts)
    if failure is not None:
        with sessions.begin() as session:
            record_request_failed(session, transaction_uid, failure)
    with sessions() as session:
        row = find_delivery(session, delivery, lock=False)
        state = CommitmentState(row.commitment) if row and row.commitment else None
        error = row.commitment_error if row else failure
    report_id, label, item = key
    if state is CommitmentState.FAILED:
        logger.warning("report %d %s -> %s: storage commitment failed (%s)", report_id, item,
                       label, error)
    else:
        logger.info("report %d %s -> %s: storage commitment %s (transaction %s)", report_id,
                    item, label, state.value if state else "?", transaction_uid)
    return state or CommitmentState.FAILED


def request_commitment_for_file(sessions: sessionmaker[Session], delivery: int | DeliveryKey,
                                destination: Destination, path: Path, *, calling_ae: str,
                                timeout_s: float = REPORT_WAIT_S,
                                timeouts: Timeouts = _TIMEOUTS) -> CommitmentState:
    """:func:`request_commitment` for the SOP instance in the sent file ``path``."""
    sop_class_uid, sop_instance_uid = sent_object(path)
    return request_commitment(sessions, delivery, destination, sop_class_uid, sop_instance_uid,
                              calling_ae=calling_ae, timeout_s=timeout_s, timeouts=timeouts)
