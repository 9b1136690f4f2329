"""Storage Commitment of delivered DICOM objects, per delivery (the caller owns the transaction).

A delivery's commitment goes ``requested`` (recorded *before* the N-ACTION is sent, so a report
arriving at once on another association finds its Transaction UID) → ``committed`` or
``failed`` from the destination's N-EVENT-REPORT, or ``failed`` when the request itself was
refused, or ``timed_out`` when no report came within the commitment timeout. A report that
arrives after the timeout still settles the delivery. docs/operations.md, "Storage Commitment".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.commitment import (
    CommitmentReport,
    CommitmentReportError,
    EventReportStatus,
    parse_event_report,
)
from db.models import (
    ERROR_LENGTH,
    CommitmentState,
    Delivery,
    DeliveryItem,
    Report,
    utcnow,
)


class DeliveryKey(NamedTuple):
    """One delivery row: a report's item to a destination (label)."""

    report_id: int
    destination: str
    item: DeliveryItem


# A report may still settle these: a late one turns ``timed_out`` into its answer.
_OPEN = (CommitmentState.REQUESTED, CommitmentState.TIMED_OUT)


@dataclass(frozen=True)
class CommitmentRecord:
    """A delivery's commitment as recorded, for logs and callers."""

    report_id: int
    destination: str
    item: DeliveryItem
    transaction_uid: str
    state: CommitmentState
    error: str | None
    changed: bool = True  # False: a duplicate report, the state was settled before


def _record(delivery: Delivery, changed: bool = True) -> CommitmentRecord:
    state = delivery.commitment
    if state is None:
        raise ValueError(f"delivery {delivery.id} has no commitment to describe")
    return CommitmentRecord(delivery.report_id, delivery.destination, DeliveryItem(delivery.item),
                            delivery.commitment_uid or "", CommitmentState(state),
                            delivery.commitment_error, changed)


def find_delivery(session: Session, ref: int | DeliveryKey, *,
                  lock: bool = True) -> Delivery | None:
    """The delivery by id or by (report id, destination, item), locked where supported."""
    query = select(Delivery).with_for_update() if lock else select(Delivery)
    if isinstance(ref, int):
        query = query.where(Delivery.id == ref)
    else:
        report_id, destination, item = ref
        query = query.where(Delivery.report_id == report_id, Delivery.destination == destination,
                            Delivery.item == item)
    return session.scalars(query).one_or_none()


def _by_transaction(session: Session, transaction_uid: str) -> Delivery | None:
    return session.scalars(
        select(Delivery).where(Delivery.commitment_uid == transaction_uid).with_for_update()
    ).first()


def _set(delivery: Delivery, state: CommitmentState, error: str | None,
         now: dt.datetime) -> None:
    delivery.commitment = state
    delivery.commitment_error = None if error is None else error[:ERROR_LENGTH]
    delivery.commitment_updated_at = now


def record_requested(session: Session, delivery: Delivery, transaction_uid: str) -> None:
    """Start a commitment: ``requested`` under a new Transaction UID (replaces an older one)."""
    now = utcnow()
    delivery.commitment_uid = transaction_uid
    delivery.commitment_requested_at = now
    _set(delivery, CommitmentState.REQUESTED, None, now)


def record_request_failed(session: Session, transaction_uid: str,
                          reason: str) -> CommitmentRecord | None:
    """The N-ACTION was not accepted: ``failed`` with ``reason``, unless a report settled it."""
    delivery = _by_transaction(session, transaction_uid)
    if delivery is None or delivery.commitment is not CommitmentState.REQUESTED:
        return None
    _set(delivery, CommitmentState.FAILED, reason, utcnow())
    return _record(delivery)


def delivered_sop_instance(session: Session, delivery: Delivery) -> str | None:
    """The SOP Instance UID a delivery sent: the report's SR, or its result image."""
    report = session.get(Report, delivery.report_id)
    if report is None:
        return None
    if delivery.item == DeliveryItem.IMAGE:
        return report.image_sop_instance_uid
    return report.sr_sop_instance_uid if delivery.item == DeliveryItem.SR else None


def _outcome(report: CommitmentReport, sop_instance_uid: str | None,
             destination: str) -> tuple[CommitmentState, str | None]:
    if sop_instance_uid is not None and sop_instance_uid in report.failed:
        return CommitmentState.FAILED, (f"{destination} did not commit SOP Instance "
                                        f"{sop_instance_uid}: {report.failed[sop_instance_uid]}")
    if sop_instance_uid is not None and sop_instance_uid in report.committed:
        return CommitmentState.COMMITTED, None
    return CommitmentState.FAILED, (f"{destination}'s commitment report for transaction "
                                    f"{report.transaction_uid} does not name SOP Instance "
                                    f"{sop_instance_uid}")


def record_report(session: Session, report: CommitmentReport) -> CommitmentRecord | None:
    """Settle the delivery of ``report.transaction_uid`` from an N-EVENT-REPORT.

    ``committed`` when its SOP instance is in the Referenced SOP Sequence, ``failed`` (with the
    Failure Reason) when it is in the Failed SOP Sequence or in neither. ``None``: no delivery
    has that Transaction UID. A report for a commitment already settled changes nothing
    (``changed`` is False).
    """
    delivery = _by_transaction(session, report.transaction_uid)
    if delivery is None:
        return None
    if delivery.commitment not in _OPEN:
        return _record(delivery, changed=False)
    state, error = _outcome(report, delivered_sop_instance(session, delivery),
                            delivery.destination)
    _set(delivery, state, error, utcnow())
    return _record(delivery)


def time_out_commitments(session: Session, requested_before: dt.datetime,
                         timeout_s: float) -> list[CommitmentRecord]:
    """Mark every commitment ``requested`` before ``requested_before`` as ``timed_out``."""
    rows = list(session.scalars(
        select(Delivery)
        .where(Delivery.commitment == CommitmentState.REQUESTED,
               Delivery.commitment_requested_at < requested_before)
        .order_by(Delivery.id)
        .with_for_update()
    ))
    now = utcnow()
    for delivery in rows:
        _set(delivery, CommitmentState.TIMED_OUT,
             f"no N-EVENT-REPORT from {delivery.destination} within {timeout_s:g} s of the "
             "request; check that the PACS knows our AE title, host and port, and that "
             "TRIAGE_ALLOWED_AETS lists its AE title", now)
    return [_record(delivery) for delivery in rows]


@dataclass(frozen=True)
class EventReportAnswer:
    """What an N-EVENT-REPORT gets back: its status, the recorded result, or why not."""

    status: EventReportStatus
    record: CommitmentRecord | None = None
    reason: str = ""


def answer_event_report(sessions: sessionmaker[Session], event_type_id: int | None,
                        information: Dataset | None) -> EventReportAnswer:
    """Read a Storage Commitment N-EVENT-REPORT and record it by its Transaction UID.

    SUCCESS (recorded, or a duplicate), NO_SUCH_EVENT_TYPE or INVALID_ARGUMENT_VALUE (the
    report is unusable, or names a transaction we never issued), PROCESSING_FAILURE (the
    database could not record it; the peer may send it again). Never raises: the caller is a
    DIMSE handler, on the node or on the worker's own association.
    """
    try:
        report = parse_event_report(event_type_id, information)
        with sessions.begin() as session:
            record = record_report(session, report)
    except CommitmentReportError as exc:
        return EventReportAnswer(exc.status, reason=f"refused (0x{int(exc.status):04X} "
                                                    f"{exc.status.name}): {exc}")
    except Exception as exc:  # the database is down
        return EventReportAnswer(EventReportStatus.PROCESSING_FAILURE,
                                 reason=f"not recorded: {type(exc).__name__}")
    if record is None:
        return EventReportAnswer(EventReportStatus.INVALID_ARGUMENT_VALUE,
                                 reason=f"for transaction {report.transaction_uid}, which we "
                                        "never requested, refused")
    return EventReportAnswer(EventReportStatus.SUCCESS, record)
