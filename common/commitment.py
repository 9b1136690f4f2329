"""Storage Commitment Push Model (PS3.4 Annex J): the UIDs, codes and the event report.

Shared by the two sides that receive an N-EVENT-REPORT: the delivery worker, on the association
that carried its N-ACTION (``worker.deliver.commitment``), and the node, on an association the
PACS opens back to us (``dicom_node.commitment``). One N-ACTION asks about one SOP instance
under its own Transaction UID, so a report settles exactly one delivery.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.dataset import Dataset

from common.errors import TriageError

# PS3.4 J.3.1 and Annex A (well-known SOP instance)
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT_ACTION = 1  # N-ACTION Action Type ID (PS3.4 J.3.2.1)
# How long the requester's association stays open for a report on it (TRIAGE_COMMITMENT_WAIT_S);
# PACS that answer later (Orthanc, most others) open an association to the node instead.
REPORT_WAIT_S = 0.2


class EventType(enum.IntEnum):
    """N-EVENT-REPORT Event Type IDs (PS3.4 J.3.3.1)."""

    SUCCESSFUL = 1  # every referenced instance is committed
    FAILURES_EXIST = 2  # the Failed SOP Sequence lists some


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.4 J.3.3.1)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213


class EventReportStatus(enum.IntEnum):
    """What we answer to an N-EVENT-REPORT (PS3.7 10.1.1.1.8, Annex C)."""

    SUCCESS = 0x0000  # recorded (or already recorded: a duplicate report)
    PROCESSING_FAILURE = 0x0110  # the database could not record it; the peer may send again
    NO_SUCH_EVENT_TYPE = 0x0113
    INVALID_ARGUMENT_VALUE = 0x0115  # no or unknown Transaction UID, malformed sequences


class ActionStatus(enum.IntEnum):
    """N-ACTION statuses we answer or read (PS3.7 10.1.4.1.10, Annex C)."""

    SUCCESS = 0x0000
    NO_SUCH_ACTION = 0x0123  # the node is no Storage Commitment SCP: it commits nothing


class CommitmentReportError(TriageError):
    """An N-EVENT-REPORT that can't be used; ``status`` is the answer to send."""

    def __init__(self, message: str, status: EventReportStatus) -> None:
        super().__init__(message)
        self.status = status


def describe_failure(reason: int | None) -> str:
    """``0x0112 (NO_SUCH_OBJECT_INSTANCE)``, for records and logs."""
    if reason is None:
        return "no failure reason given"
    try:
        name = FailureReason(reason).name
    except ValueError:
        name = "unknown reason"
    return f"0x{reason:04X} ({name})"


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT: which SOP instances are committed, which failed and why."""

    transaction_uid: str
    committed: frozenset[str]  # SOP Instance UIDs of the Referenced SOP Sequence
    failed: dict[str, str]  # SOP Instance UID -> described Failure Reason


def _instances(info: Dataset, keyword: str) -> list[Dataset]:
    items = info.get(keyword)
    if items is None:
        return []
    for item in items:
        if not str(item.get("ReferencedSOPInstanceUID", "")).strip():
            raise CommitmentReportError(f"an item of {keyword} has no Referenced SOP Instance UID",
                                        EventReportStatus.INVALID_ARGUMENT_VALUE)
    return list(items)


def parse_event_report(event_type_id: int | None, info: Dataset | None) -> CommitmentReport:
    """Read the Event Information of a Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3).

    Raises ``CommitmentReportError`` (with the status to answer) for an unknown event type, a
    missing Transaction UID or a malformed sequence.
    """
    if event_type_id not in (EventType.SUCCESSFUL, EventType.FAILURES_EXIST):
        raise CommitmentReportError(f"event type {event_type_id} is not 1 or 2",
                                    EventReportStatus.NO_SUCH_EVENT_TYPE)
    if info is None:
        raise CommitmentReportError("no Event Information",
                                    EventReportStatus.INVALID_ARGUMENT_VALUE)
    try:
        transaction_uid = str(info.get("TransactionUID", "")).strip()
        committed = frozenset(str(item.ReferencedSOPInstanceUID).strip()
                              for item in _instances(info, "ReferencedSOPSequence"))
        failed = {str(item.ReferencedSOPInstanceUID).strip(): describe_failure(_reason(item))
                  for item in _instances(info, "FailedSOPSequence")}
    except CommitmentReportError:
        raise
    except Exception as exc:  # a value pydicom can't decode: the peer's data, not our bug
        raise CommitmentReportError(f"unreadable Event Information ({type(exc).__name__})",
                                    EventReportStatus.INVALID_ARGUMENT_VALUE) from exc
    if not transaction_uid:
        raise CommitmentReportError("no Transaction UID", EventReportStatus.INVALID_ARGUMENT_VALUE)
    return CommitmentReport(transaction_uid, committed, failed)


def _reason(item: Dataset) -> int | None:
    value = item.get("FailureReason")
    return None if value is None or value == "" else int(value)
