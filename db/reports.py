"""Repository of study reports and their deliveries (the caller owns the transaction)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from db.instances import dialect_insert
from db.models import (
    ERROR_LENGTH,
    Decision,
    Delivery,
    DeliveryItem,
    DeliveryState,
    Instance,
    InstanceStatus,
    Priority,
    Report,
    Score,
    Study,
    utcnow,
)

_PENDING = (InstanceStatus.RECEIVED.value, InstanceStatus.QUEUED.value,
            InstanceStatus.SCORING.value)
# Deliveries still to be attempted (the reconciler publishes them when due).
_DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
# A HIGH report in one of these states has reached, or is on its way to, the destination.
_HIGH_ON_ITS_WAY = (DeliveryState.SENT.value, DeliveryState.PENDING.value,
                    DeliveryState.RETRYING.value)


@dataclass(frozen=True)
class StudyView:
    """A study as the report rule sees it under one model version."""

    study: Study
    pending: int  # triage candidates not scored yet (received, queued or scoring)
    scored: Sequence[tuple[Instance, Score]]  # current content's scores


def study_view(session: Session, study_id: int, model_version: str) -> StudyView | None:
    """Read a study, its unscored candidates and the scores of its current images."""
    study = session.get(Study, study_id)
    if study is None:
        return None
    instances = list(session.scalars(select(Instance).where(Instance.study_id == study_id)))
    pending = sum(1 for i in instances if i.status in _PENDING)
    rows = session.execute(
        select(Instance, Score)
        .join(Score, Score.instance_id == Instance.id)
        .where(Instance.study_id == study_id,
               Instance.status == InstanceStatus.SCORED.value,
               Score.model_version == model_version,
               Score.content_sha256 == Instance.content_sha256)
        .order_by(Instance.id)
    ).all()
    return StudyView(study, pending, [(row[0], row[1]) for row in rows])


def rescore_for_live_model(session: Session, study_id: int, model_version: str) -> int:
    """Send the study's images scored only under another model version back to ``received``.

    A model promoted between an image's score and its study's report would otherwise leave
    that image out of the report (or the study unreported): the reconciler publishes the
    rows again and the live model scores them. Returns how many were sent back.
    """
    live_score = exists().where(Score.instance_id == Instance.id,
                                Score.model_version == model_version,
                                Score.content_sha256 == Instance.content_sha256)
    result = session.execute(
        update(Instance)
        .where(Instance.study_id == study_id, Instance.status == InstanceStatus.SCORED.value,
               ~live_score)
        .values(status=InstanceStatus.RECEIVED.value, enqueued_at=None, updated_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def latest_report(session: Session, study_id: int, model_version: str) -> Report | None:
    """The highest revision written for a study under a model version."""
    return session.scalars(
        select(Report)
        .where(Report.study_id == study_id, Report.model_version == model_version)
        .order_by(Report.revision.desc())
        .limit(1)
    ).first()


@dataclass(frozen=True)
class NewReport:
    """One report revision as ``insert_report`` records it (the SR is already written)."""

    study_id: int
    model_version: str
    revision: int
    decision: Decision
    priority: Priority
    probability_mean: float
    probability_std: float
    source_instance_id: int  # the image whose result is the study's
    scored_instance_count: int
    sr_study_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    file_path: str
    predecessor_id: int | None  # the report this one supersedes
    worker_host: str


def insert_report(session: Session, report: NewReport) -> int | None:
    """Insert a report revision; ``None`` when another task wrote that revision first."""
    inserted = session.scalars(
        dialect_insert(session, Report).values(created_at=utcnow(), **dataclasses.asdict(report))
        .on_conflict_do_nothing(index_elements=["study_id", "model_version", "revision"])
        .returning(Report.id)
    ).one_or_none()
    return None if inserted is None else int(inserted)


@dataclass(frozen=True)
class DeliveryTargetRow:
    """One delivery to record: a destination label, whether it is shadow only, and the item."""

    destination: str
    shadow: bool
    item: DeliveryItem = DeliveryItem.SR


def add_deliveries(session: Session, report_id: int, targets: Sequence[DeliveryTargetRow]) -> None:
    """One ``pending`` delivery per (destination, item), once."""
    now = utcnow()
    for target in targets:
        session.execute(
            dialect_insert(session, Delivery).values(
                report_id=report_id, destination=target.destination, item=target.item,
                shadow=target.shadow, state=DeliveryState.PENDING, attempts=0, created_at=now,
                updated_at=now, next_attempt_at=now)
            .on_conflict_do_nothing(index_elements=["report_id", "destination", "item"])
        )


def report_deliveries(session: Session, report_id: int) -> list[tuple[str, DeliveryItem]]:
    """The (destination, item) pairs recorded for a report, in the order they were added."""
    rows = session.execute(
        select(Delivery.destination, Delivery.item)
        .where(Delivery.report_id == report_id).order_by(Delivery.id)
    ).all()
    return [(str(destination), DeliveryItem(item)) for destination, item in rows]


def get_delivery(session: Session, report_id: int, destination: str,
                 item: DeliveryItem = DeliveryItem.SR) -> Delivery | None:
    """The delivery row, locked for update where the database supports it."""
    return session.scalars(
        select(Delivery)
        .where(Delivery.report_id == report_id, Delivery.destination == destination,
               Delivery.item == item)
        .with_for_update()
    ).one_or_none()


def set_delivery_state(session: Session, delivery: Delivery, state: DeliveryState,
                       error: str | None = None,
                       next_attempt_at: dt.datetime | None = None) -> None:
    """Record the state (and error) of a delivery; ``sent_at`` when it was sent.

    ``next_attempt_at``: when a ``retrying`` delivery is due again (``None`` when final).
    ``failing_since`` is set by the first failed attempt and cleared once it is sent.
    """
    delivery.state = state
    delivery.last_error = None if error is None else error[:ERROR_LENGTH]
    delivery.updated_at = utcnow()
    delivery.next_attempt_at = next_attempt_at
    if state is DeliveryState.SENT:
        delivery.sent_at = delivery.updated_at
    if state in (DeliveryState.SENT, DeliveryState.SHADOW, DeliveryState.WITHHELD):
        delivery.failing_since = None
    elif state in (DeliveryState.RETRYING, DeliveryState.FAILED) and delivery.failing_since is None:
        delivery.failing_since = delivery.updated_at


def high_priority_on_its_way(session: Session, report: Report, destination: str) -> int | None:
    """Id of an earlier HIGH revision (same study and model version) sent, or being sent, to
    ``destination``; ``None`` when there is none."""
    return session.scalars(
        select(Report.id)
        .join(Delivery, Delivery.report_id == Report.id)
        .where(Report.study_id == report.study_id,
               Report.model_version == report.model_version,
               Report.revision < report.revision,
               Report.priority == Priority.HIGH,
               Delivery.destination == destination,
               Delivery.state.in_(_HIGH_ON_ITS_WAY))
        .order_by(Report.revision.desc())
        .limit(1)
    ).first()


@dataclass(frozen=True)
class DeliveryRow:
    """One line of ``cxr-triage deliveries``."""

    report_id: int
    study_instance_uid: str
    revision: int
    decision: Decision
    priority: Priority
    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    updated_at: dt.datetime
    next_attempt_at: dt.datetime | None = None  # pending/retrying: when it is due
    item: DeliveryItem = DeliveryItem.SR


def list_deliveries(session: Session, *, failed_only: bool = False,
                    limit: int = 200) -> list[DeliveryRow]:
    """The most recently updated deliveries, newest first."""
    query = (
        select(Delivery, Report, Study.study_instance_uid)
        .join(Report, Report.id == Delivery.report_id)
        .join(Study, Study.id == Report.study_id)
        .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    if failed_only:
        query = query.where(Delivery.state == DeliveryState.FAILED.value)
    return [
        DeliveryRow(r.id, str(uid), r.revision, r.decision, r.priority, d.destination, d.state,
                    d.attempts, d.last_error, d.updated_at,
                    d.next_attempt_at if d.state in _DUE_STATES else None, DeliveryItem(d.item))
        for d, r, uid in session.execute(query).all()
    ]


def requeue_deliveries(session: Session, *, report_id: int | None = None,
                       all_failed: bool = False) -> list[tuple[int, str, DeliveryItem]]:
    """Put deliveries back to ``pending``, due now, with a fresh attempt count.

    ``report_id``: every delivery of that report not already sent (or shadow);
    ``all_failed``: every ``failed`` delivery, and every ``retrying`` one past its due time.
    Returns (report id, destination, item) triples.
    """
    now = utcnow()
    query = select(Delivery)
    if report_id is not None:
        query = query.where(Delivery.report_id == report_id, Delivery.state.not_in(
            [DeliveryState.SENT.value, DeliveryState.SHADOW.value]))
    elif all_failed:
        overdue = and_(Delivery.state == DeliveryState.RETRYING,
                       or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
        query = query.where(or_(Delivery.state == DeliveryState.FAILED, overdue))
    else:
        return []
    rows = list(session.scalars(query.with_for_update()))
    if rows:
        session.execute(
            update(Delivery).where(Delivery.id.in_([d.id for d in rows]))
            .values(state=DeliveryState.PENDING.value, attempts=0, updated_at=now,
                    next_attempt_at=now)
        )
    return [(d.report_id, d.destination, DeliveryItem(d.item)) for d in rows]
