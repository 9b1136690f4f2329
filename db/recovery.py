"""The database as the queue of record: when each step is due, and what became of it.

Every step after the store leaves a due time in the database before its message is sent:
an instance's ``enqueued_at`` or score claim, a study's ``report_due_at``, a delivery's
``next_attempt_at``. The node's reconciler (``dicom_node.reconcile``) reads the overdue ones
with the queries below and publishes them again, so a lost message only delays a step.

Like the other repositories, these functions never commit; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, literal, or_, select, update
from sqlalchemy.orm import Session

from db.models import (
    ERROR_LENGTH,
    Delivery,
    DeliveryItem,
    DeliveryState,
    Instance,
    InstanceStatus,
    ScoreClaim,
    Study,
    UTCDateTime,
)

RECOVERY_BATCH = 500  # rows of each kind one reconciler round publishes at most

# --- Reports ------------------------------------------------------------------------------------


def _due_not_later_than(due_at: dt.datetime) -> object:
    """``report_due_at`` moved to ``due_at`` unless it is already earlier."""
    due = literal(due_at, UTCDateTime())
    return case((or_(Study.report_due_at.is_(None), Study.report_due_at > due), due),
                else_=Study.report_due_at)


def schedule_reports(session: Session, study_ids: Sequence[int], due_at: dt.datetime) -> None:
    """Something new happened to these studies (an image queued or scored): the report rule
    must run by ``due_at``. An earlier due time is kept; a report given up on is tried again."""
    if not study_ids:
        return
    session.execute(
        update(Study).where(Study.id.in_(list(study_ids)))
        .values(report_due_at=_due_not_later_than(due_at),
                report_generation=Study.report_generation + 1, report_failed_at=None)
        .execution_options(synchronize_session=False)
    )


def schedule_report_of_instance(session: Session, instance_id: int, due_at: dt.datetime) -> None:
    """:func:`schedule_reports` for the study of one instance (one statement, no read first)."""
    study_id = select(Instance.study_id).where(Instance.id == instance_id).scalar_subquery()
    session.execute(
        update(Study).where(Study.id == study_id)
        .values(report_due_at=_due_not_later_than(due_at),
                report_generation=Study.report_generation + 1, report_failed_at=None)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class ReportState:
    """A study's report step as recorded: read it before the study itself (see
    :func:`settle_report`)."""

    generation: int  # events that made the report due (compared when it is settled)
    attempts: int  # failed attempts since the last success
    due_at: dt.datetime | None  # when the report rule runs next


def report_state(session: Session, study_id: int) -> ReportState | None:
    """The recorded report step of a study, or ``None`` if there is no such study."""
    row = session.execute(
        select(Study.report_generation, Study.report_attempts, Study.report_due_at)
        .where(Study.id == study_id)
    ).one_or_none()
    return None if row is None else ReportState(int(row[0]), int(row[1]), row[2])


def settle_report(session: Session, study_id: int, generation: int) -> None:
    """The report rule ran to an end (written, unchanged, nothing to report): forget the
    failures, and the due time unless something new made it due again since ``generation``."""
    session.execute(
        update(Study).where(Study.id == study_id)
        .values(report_attempts=0, report_error=None, report_failed_at=None,
                report_due_at=case((Study.report_generation == generation, None),
                                   else_=Study.report_due_at))
        .execution_options(synchronize_session=False)
    )


def postpone_report(session: Session, study_id: int, due_at: dt.datetime) -> None:
    """The study is not ready (not quiet, images still being scored): run again at ``due_at``."""
    session.execute(
        update(Study).where(Study.id == study_id).values(report_due_at=due_at)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class ReportFailure:
    """What went wrong with a study's report; ``retry_at`` ``None`` means given up."""

    error: str
    retry_at: dt.datetime | None
    failed_at: dt.datetime


def record_report_failure(session: Session, study_id: int, generation: int,
                          failure: ReportFailure) -> None:
    """Count the failed attempt and keep its reason.

    Retried: due again at ``retry_at``. Given up: ``report_failed_at`` set and the due time
    cleared, unless something new (``generation`` moved) made the study due again meanwhile.
    """
    unchanged = Study.report_generation == generation
    if failure.retry_at is not None:
        values: dict[str, object] = {"report_due_at": failure.retry_at,
                                     "report_failed_at": None}
    else:
        failed_at = literal(failure.failed_at, UTCDateTime())
        values = {"report_due_at": case((unchanged, None), else_=Study.report_due_at),
                  "report_failed_at": case((unchanged, failed_at), else_=None)}
    session.execute(
        update(Study).where(Study.id == study_id)
        .values(report_attempts=Study.report_attempts + 1,
                report_error=failure.error[:ERROR_LENGTH], **values)
        .execution_options(synchronize_session=False)
    )


# --- What the reconciler publishes again --------------------------------------------------------


def stale_claims(session: Session, older_than: dt.datetime,
                 limit: int = RECOVERY_BATCH) -> list[int]:
    """Instances ``queued`` since before ``older_than``, or ``scoring`` under a claim older
    than that (the worker died), that were not published again since."""
    not_republished = or_(Instance.enqueued_at.is_(None), Instance.enqueued_at < older_than)
    stale_claim = or_(ScoreClaim.claimed_at.is_(None), ScoreClaim.claimed_at < older_than)
    rows = session.scalars(
        select(Instance.id)
        .outerjoin(ScoreClaim, ScoreClaim.instance_id == Instance.id)
        .where(not_republished, or_(
            Instance.status == InstanceStatus.QUEUED,
            and_(Instance.status == InstanceStatus.SCORING, stale_claim)))
        .order_by(Instance.received_at, Instance.id)
        .limit(limit)
    )
    return [int(row) for row in rows]


def mark_republished(session: Session, instance_ids: Sequence[int], now: dt.datetime) -> None:
    """Record that these ``queued``/``scoring`` instances were published again at ``now``."""
    if not instance_ids:
        return
    session.execute(
        update(Instance)
        .where(Instance.id.in_(list(instance_ids)),
               Instance.status.in_([InstanceStatus.QUEUED, InstanceStatus.SCORING]))
        .values(enqueued_at=now, enqueue_count=Instance.enqueue_count + 1)
        .execution_options(synchronize_session=False)
    )


def due_studies(session: Session, due_before: dt.datetime,
                limit: int = RECOVERY_BATCH) -> list[tuple[int, dt.datetime]]:
    """(study id, report due time) of studies whose report rule was due before ``due_before``."""
    rows = session.execute(
        select(Study.id, Study.report_due_at)
        .where(Study.report_due_at <= due_before)
        .order_by(Study.report_due_at)
        .limit(limit)
    ).all()
    return [(int(study_id), due) for study_id, due in rows if due is not None]


@dataclass(frozen=True)
class DueDelivery:
    """A delivery the reconciler may publish again; ``version`` changes with every attempt."""

    report_id: int
    destination: str
    version: tuple[int, dt.datetime | None]
    item: DeliveryItem = DeliveryItem.SR


def due_deliveries(session: Session, due_before: dt.datetime,
                   limit: int = RECOVERY_BATCH) -> list[DueDelivery]:
    """``pending`` and ``retrying`` deliveries whose next attempt was due before ``due_before``."""
    rows = session.execute(
        select(Delivery.report_id, Delivery.destination, Delivery.attempts,
               Delivery.next_attempt_at, Delivery.item)
        .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.RETRYING]),
               or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= due_before))
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    ).all()
    return [DueDelivery(int(r), str(d), (int(a), n), DeliveryItem(i)) for r, d, a, n, i in rows]
