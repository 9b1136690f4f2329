"""Repository of study reports and their deliveries (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.instances import dialect_insert
from db.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Report,
    Score,
    Study,
    utcnow,
)
from db.scores import ERROR_LENGTH

_PENDING = (InstanceStatus.RECEIVED.value, InstanceStatus.QUEUED.value,
            InstanceStatus.SCORING.value)
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


def latest_report(session: Session, study_id: int, model_version: str) -> Report | None:
    """The highest revision written for a study under a model version."""
    return session.scalars(
        select(Report)
        .where(Report.study_id == study_id, Report.model_version == model_version)
        .order_by(Report.revision.desc())
        .limit(1)
    ).first()


def insert_report(session: Session, values: dict[str, Any]) -> int | None:
    """Insert a report revision; ``None`` when another task wrote that revision first."""
    inserted = session.scalars(
        dialect_insert(session, Report).values(created_at=utcnow(), **values)
        .on_conflict_do_nothing(index_elements=["study_id", "model_version", "revision"])
        .returning(Report.id)
    ).one_or_none()
    return None if inserted is None else int(inserted)


def add_deliveries(session: Session, report_id: int, targets: Sequence[tuple[str, bool]]) -> None:
    """One ``pending`` delivery per (destination label, shadow flag), once."""
    now = utcnow()
    for label, shadow in targets:
        session.execute(
            dialect_insert(session, Delivery).values(
                report_id=report_id, destination=label, shadow=shadow,
                state=DeliveryState.PENDING.value, attempts=0, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["report_id", "destination"])
        )


def get_delivery(session: Session, report_id: int, destination: str) -> Delivery | None:
    """The delivery row, locked for update where the database supports it."""
    return session.scalars(
        select(Delivery)
        .where(Delivery.report_id == report_id, Delivery.destination == destination)
        .with_for_update()
    ).one_or_none()


def set_delivery_state(session: Session, delivery: Delivery, state: DeliveryState,
                       error: str | None = None) -> None:
    """Record the state (and error) of a delivery; ``sent_at`` when it was sent."""
    delivery.state = state.value
    delivery.last_error = None if error is None else error[:ERROR_LENGTH]
    delivery.updated_at = utcnow()
    if state is DeliveryState.SENT:
        delivery.sent_at = delivery.updated_at


def high_priority_on_its_way(session: Session, report: Report, destination: str) -> int | None:
    """Id of an earlier HIGH revision (same study and model version) sent, or being sent, to
    ``destination``; ``None`` when there is none."""
    return session.scalars(
        select(Report.id)
        .join(Delivery, Delivery.report_id == Report.id)
        .where(Report.study_id == report.study_id,
               Report.model_version == report.model_version,
               Report.revision < report.revision,
               Report.priority == "HIGH",
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
    decision: str
    priority: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    updated_at: dt.datetime


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
                    d.attempts, d.last_error, d.updated_at)
        for d, r, uid in session.execute(query).all()
    ]


def requeue_deliveries(session: Session, *, report_id: int | None = None,
                       all_failed: bool = False) -> list[tuple[int, str]]:
    """Put deliveries back to ``pending`` with a fresh attempt count.

    ``report_id``: every delivery of that report not already sent (or shadow);
    ``all_failed``: every ``failed`` delivery. Returns (report id, destination) pairs.
    """
    query = select(Delivery)
    if report_id is not None:
        query = query.where(Delivery.report_id == report_id, Delivery.state.not_in(
            [DeliveryState.SENT.value, DeliveryState.SHADOW.value]))
    elif all_failed:
        query = query.where(Delivery.state == DeliveryState.FAILED.value)
    else:
        return []
    rows = list(session.scalars(query.with_for_update()))
    now = utcnow()
    if rows:
        session.execute(
            update(Delivery).where(Delivery.id.in_([d.id for d in rows]))
            .values(state=DeliveryState.PENDING.value, attempts=0, updated_at=now)
        )
    return [(d.report_id, d.destination) for d in rows]
