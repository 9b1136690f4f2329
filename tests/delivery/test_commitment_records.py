"""Reading N-EVENT-REPORTs (common.commitment) and recording commitments (db.commitments)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from common.commitment import (
    CommitmentReport,
    CommitmentReportError,
    EventReportStatus,
    EventType,
    FailureReason,
    parse_event_report,
)
from db.commitments import (
    find_delivery,
    record_report,
    record_request_failed,
    record_requested,
    time_out_commitments,
)
from db.migrate import upgrade
from db.models import CommitmentState, Delivery, utcnow
from db.session import make_engine, make_session_factory
from tests.support.deliveries import add_sent_delivery

PACS = "PACS@127.0.0.1:104"


def _item(sop_instance_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def _info(transaction_uid: str, committed: tuple[str, ...] = (),
          failed: dict[str, int] | None = None) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction_uid
    if committed:
        info.ReferencedSOPSequence = [_item(uid) for uid in committed]
    if failed:
        info.FailedSOPSequence = [_item(uid, reason) for uid, reason in failed.items()]
    return info


def test_a_report_names_what_is_committed_and_why_the_rest_failed() -> None:
    report = parse_event_report(EventType.FAILURES_EXIST, _info(
        "1.2.3", committed=("1.2.3.4",),
        failed={"1.2.3.5": FailureReason.NO_SUCH_OBJECT_INSTANCE, "1.2.3.6": 0x0999}))
    assert report.transaction_uid == "1.2.3"
    assert report.committed == frozenset({"1.2.3.4"})
    assert report.failed == {"1.2.3.5": "0x0112 (NO_SUCH_OBJECT_INSTANCE)",
                             "1.2.3.6": "0x0999 (unknown reason)"}


@pytest.mark.parametrize(("event_type", "info", "status"), [
    (3, _info("1.2.3", committed=("1.2.3.4",)), EventReportStatus.NO_SUCH_EVENT_TYPE),
    (1, None, EventReportStatus.INVALID_ARGUMENT_VALUE),
    (1, _info("", committed=("1.2.3.4",)), EventReportStatus.INVALID_ARGUMENT_VALUE),
    (1, _info("1.2.3", committed=("",)), EventReportStatus.INVALID_ARGUMENT_VALUE),
])
def test_unusable_reports_are_answered_with_a_named_status(
        event_type: int, info: Dataset | None, status: EventReportStatus) -> None:
    with pytest.raises(CommitmentReportError) as raised:
        parse_event_report(event_type, info)
    assert raised.value.status is status


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def requested(sessions: sessionmaker[Session], sr_file: Path) -> tuple[int, str, str]:
    """A sent SR whose commitment was requested: (delivery id, Transaction UID, SOP UID)."""
    delivery_id = add_sent_delivery(sessions, sr_file, PACS)
    transaction_uid = generate_uid()
    with sessions.begin() as session:
        delivery = find_delivery(session, delivery_id)
        assert delivery is not None
        record_requested(session, delivery, transaction_uid)
    return delivery_id, transaction_uid, str(pydicom.dcmread(sr_file).SOPInstanceUID)


def _commitment(sessions: sessionmaker[Session], delivery_id: int) -> Delivery:
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery


def _record(sessions: sessionmaker[Session], report: CommitmentReport) -> bool | None:
    with sessions.begin() as session:
        record = record_report(session, report)
        return None if record is None else record.changed


def test_committed_then_a_duplicate_report_changes_nothing(
        sessions: sessionmaker[Session], requested: tuple[int, str, str]) -> None:
    delivery_id, transaction_uid, sop_uid = requested
    report = CommitmentReport(transaction_uid, frozenset({sop_uid}), {})
    assert _record(sessions, report) is True
    assert _record(sessions, CommitmentReport(transaction_uid, frozenset(), {sop_uid: "x"})) \
        is False
    delivery = _commitment(sessions, delivery_id)
    assert delivery.commitment is CommitmentState.COMMITTED
    assert delivery.commitment_error is None and delivery.commitment_updated_at is not None


def test_failed_with_the_reason_the_destination_gave(sessions: sessionmaker[Session],
                                                     requested: tuple[int, str, str]) -> None:
    delivery_id, transaction_uid, sop_uid = requested
    _record(sessions, CommitmentReport(transaction_uid, frozenset(), {sop_uid: "0x0110 (X)"}))
    delivery = _commitment(sessions, delivery_id)
    assert delivery.commitment is CommitmentState.FAILED
    assert delivery.commitment_error == f"{PACS} did not commit SOP Instance {sop_uid}: 0x0110 (X)"


def test_failed_when_the_report_leaves_the_instance_out(sessions: sessionmaker[Session],
                                                        requested: tuple[int, str, str]) -> None:
    delivery_id, transaction_uid, _ = requested
    _record(sessions, CommitmentReport(transaction_uid, frozenset({"1.2.3.4"}), {}))
    delivery = _commitment(sessions, delivery_id)
    assert delivery.commitment is CommitmentState.FAILED
    assert "does not name SOP Instance" in (delivery.commitment_error or "")


def test_unknown_transaction_is_not_recorded(sessions: sessionmaker[Session],
                                             requested: tuple[int, str, str]) -> None:
    delivery_id, _, sop_uid = requested
    assert _record(sessions, CommitmentReport("1.2.3.4.5", frozenset({sop_uid}), {})) is None
    assert _commitment(sessions, delivery_id).commitment is CommitmentState.REQUESTED


def test_timeout_then_a_late_report_still_settles_it(sessions: sessionmaker[Session],
                                                     requested: tuple[int, str, str]) -> None:
    delivery_id, transaction_uid, sop_uid = requested
    with sessions.begin() as session:
        assert time_out_commitments(session, utcnow() - dt.timedelta(hours=1), 3600) == []
    with sessions.begin() as session:
        (record,) = time_out_commitments(session, utcnow() + dt.timedelta(seconds=1), 3600)
    assert record.state is CommitmentState.TIMED_OUT and record.destination == PACS
    assert "no N-EVENT-REPORT from PACS@127.0.0.1:104 within 3600 s" in (record.error or "")

    assert _record(sessions, CommitmentReport(transaction_uid, frozenset({sop_uid}), {})) is True
    assert _commitment(sessions, delivery_id).commitment is CommitmentState.COMMITTED


def test_a_refused_request_does_not_overwrite_a_report(sessions: sessionmaker[Session],
                                                       requested: tuple[int, str, str]) -> None:
    delivery_id, transaction_uid, sop_uid = requested
    _record(sessions, CommitmentReport(transaction_uid, frozenset({sop_uid}), {}))
    with sessions.begin() as session:
        assert record_request_failed(session, transaction_uid, "no N-ACTION response") is None
    assert _commitment(sessions, delivery_id).commitment is CommitmentState.COMMITTED
