"""Storage Commitment reports that a PACS sends back to us (PS3.4 J.3.3), and their timeout.

The delivery worker requests Storage Commitment after a C-STORE (``worker.deliver.commitment``)
and records the delivery's commitment as ``requested`` under its Transaction UID. Most PACS,
Orthanc among them, send the N-EVENT-REPORT later, on an association they open to the AE
title that asked, at the host and port configured for it there: the node. The node accepts
Storage Commitment Push Model with the peer in the SCP role (role selection, PS3.7 D.3.3.4)
from allow-listed AE titles only, and records the result by Transaction UID. The reconciler
marks commitments left ``requested`` for ``TRIAGE_COMMITMENT_TIMEOUT_S`` as ``timed_out``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import cast

from pynetdicom import events
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from sqlalchemy.orm import Session, sessionmaker

from common.commitment import (
    ActionStatus,
    EventReportStatus,
)
from db.commitments import CommitmentRecord, answer_event_report, time_out_commitments
from db.models import CommitmentState

LOGGER = logging.getLogger(__name__)


def handle_commitment_report(event: events.Event,
                             sessions: sessionmaker[Session]) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT: record a Storage Commitment result by its Transaction UID.

    Returns one of :class:`~common.commitment.EventReportStatus`: SUCCESS (recorded, or a
    duplicate of a report already recorded), NO_SUCH_EVENT_TYPE, INVALID_ARGUMENT_VALUE (no
    usable Transaction UID, or one we never issued) or PROCESSING_FAILURE (the database could
    not record it; the PACS may send it again).
    """
    calling = event.assoc.requestor.ae_title
    request = cast(N_EVENT_REPORT, event.request)
    answer = answer_event_report(sessions, request.EventTypeID, event.event_information)
    if answer.record is None:
        log = (LOGGER.error if answer.status is EventReportStatus.PROCESSING_FAILURE
               else LOGGER.warning)
        log("storage commitment report from %s %s", calling, answer.reason)
    else:
        _log(answer.record, calling)
    return int(answer.status), None


def handle_commitment_request(event: events.Event) -> tuple[int, None]:
    """EVT_N_ACTION: the node takes no responsibility for what it receives; always NO_SUCH_ACTION.

    A peer that proposes Storage Commitment without role selection gets the default roles, so
    it may send an N-ACTION; it is answered ``ActionStatus.NO_SUCH_ACTION`` (0x0123).
    """
    LOGGER.warning("storage commitment request (N-ACTION) from %s refused: the node is not a "
                   "Storage Commitment SCP", event.assoc.requestor.ae_title)
    return int(ActionStatus.NO_SUCH_ACTION), None


def _log(record: CommitmentRecord, calling: str) -> None:
    where = f"report {record.report_id} {record.item.value} -> {record.destination}"
    if not record.changed:
        LOGGER.info("%s: storage commitment already %s; duplicate report from %s ignored",
                    where, record.state.value, calling)
    elif record.state is CommitmentState.COMMITTED:
        LOGGER.info("%s: storage committed (report from %s, transaction %s)", where, calling,
                    record.transaction_uid)
    else:
        LOGGER.warning("%s: storage commitment %s: %s", where, record.state.value, record.error)


def expire_commitments(sessions: sessionmaker[Session], timeout_s: float,
                       now: dt.datetime) -> list[CommitmentRecord]:
    """Mark commitments ``requested`` longer than ``timeout_s`` ``timed_out``, and log each."""
    with sessions.begin() as session:
        records = time_out_commitments(session, now - dt.timedelta(seconds=timeout_s), timeout_s)
    for record in records:
        LOGGER.warning("report %d %s -> %s: storage commitment timed out: no N-EVENT-REPORT "
                       "within %g s (transaction %s); `cxr-triage deliveries` shows it",
                       record.report_id, record.item.value, record.destination, timeout_s,
                       record.transaction_uid)
    return records
