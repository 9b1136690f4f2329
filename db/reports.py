"""Repository of study reports and their deliveries (the caller owns the transaction)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from db.instances import dialect_insert
from db.models import (
    ERROR_LENGTH,
    CommitmentState,
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
    reports: int = 0  # reports the study already has, under any model version


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
    reports = session.scalar(
        select(func.count()).select_from(Report).where(Report.study_id == study_id)) or 0
    return StudyView(study, pending, [(row[0], row[1]) for row in rows], int(reports))


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
    sr_series_number: int | None = None  # the SR's own series (one per revision)
    # The result image (Secondary Capture) written with the SR; all None without one.
    image_series_instance_uid: str | None = None
    image_sop_instance_uid: str | None = None
    image_series_number: int | None = None
    image_file_path: str | None = None


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
    commitment: CommitmentState | None = None  # Storage Commitment, when the destination asks
    commitment_error: str | None = None


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
                    d.next_attempt_at if d.state in _DUE_STATES else None, DeliveryItem(d.item),
                    d.commitment, d.commitment_error)
        for d, r, uid in session.execute(query).all()
    ]


def requeue_deliveries(session: Session, *, report_id: int | None = None,
                       all_failed: bool = False,
                       destination: str | None = None) -> list[tuple[int, str, DeliveryItem]]:
    """Put deliveries back to ``pending``, due now, with a fresh attempt count and horizon.

    ``report_id``: every delivery of that report not already sent (or shadow);
    ``all_failed``: every ``failed`` delivery, and every ``retrying`` one past its due time;
    ``destination``: only those to this destination label.
    Returns (report id, destination, item) triples.
    """
    now = utcnow()
    query = select(Delivery)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
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
                    next_attempt_at=now, failing_since=None)
        )
    return [(d.report_id, d.destination, DeliveryItem(d.item)) for d in rows]


# --- Failing destinations (docs/operations.md, "Outages") ------------------------------------


def destination_hold(session: Session, destination: str, *, other_than: int,
                     after: dt.datetime) -> tuple[dt.datetime, int] | None:
    """When a failing destination is next tried by another of its deliveries.

    The earliest ``next_attempt_at`` later than ``after`` among the other ``retrying``
    deliveries to ``destination`` (in their backoff, or holding the lease of an attempt in
    progress), with that delivery's report id; ``None`` when none, so it may be tried now.
    ``after`` is the later of now and the asking delivery's own due time, so deliveries waiting
    for the same attempt never hold each other up.
    """
    row = session.execute(
        select(Delivery.next_attempt_at, Delivery.report_id)
        .where(Delivery.destination == destination, Delivery.id != other_than,
               Delivery.state == DeliveryState.RETRYING, Delivery.failing_since.is_not(None),
               Delivery.next_attempt_at > after)
        .order_by(Delivery.next_attempt_at).limit(1)
    ).first()
    if row is None or row[0] is None:
        return None
    return row[0], int(row[1])


def release_destination(session: Session, destination: str,
                        now: dt.datetime) -> list[tuple[int, str, DeliveryItem]]:
    """A delivery to ``destination`` was sent: its other ``retrying`` deliveries are due now.

    Returns their (report id, destination, item) triples, to be published.
    """
    rows = list(session.scalars(
        select(Delivery)
        .where(Delivery.destination == destination, Delivery.state == DeliveryState.RETRYING,
               Delivery.next_attempt_at > now)
        .with_for_update()))
    for delivery in rows:
        delivery.next_attempt_at = now
    return [(d.report_id, d.destination, DeliveryItem(d.item)) for d in rows]


@dataclass(frozen=True)
class FailingDestination:
    """A destination whose deliveries have been failing since nothing was sent to it."""

    destination: str
    failing_since: dt.datetime  # the oldest first failure among them
    retrying: int
    failed: int
    next_attempt_at: dt.datetime | None  # the earliest retry, if any
    last_error: str | None  # of the most recently updated one

    def failing_for_s(self, now: dt.datetime) -> float:
        return max(0.0, (now - self.failing_since).total_seconds())


_FAILING = (DeliveryState.RETRYING.value, DeliveryState.FAILED.value)


def failing_destinations(session: Session) -> list[FailingDestination]:
    """Destinations with ``retrying`` or ``failed`` deliveries that began failing after the
    last delivery sent there (an old failure of one object does not make a working
    destination failing), longest failing first."""
    candidates = session.execute(
        select(Delivery.destination, func.min(Delivery.failing_since))
        .where(Delivery.state.in_(_FAILING), Delivery.failing_since.is_not(None))
        .group_by(Delivery.destination)
    ).all()
    found = []
    for destination, oldest in candidates:
        last_sent = session.scalar(
            select(func.max(Delivery.sent_at))
            .where(Delivery.state == DeliveryState.SENT.value, Delivery.updated_at >= oldest,
                   Delivery.destination == destination))
        failing = select(Delivery).where(
            Delivery.destination == destination, Delivery.state.in_(_FAILING),
            Delivery.failing_since.is_not(None))
        if last_sent is not None:
            failing = failing.where(Delivery.failing_since > last_sent)
        rows = list(session.scalars(failing.order_by(Delivery.updated_at.desc())))
        if rows:
            nexts = [d.next_attempt_at for d in rows if d.next_attempt_at is not None
                     and d.state == DeliveryState.RETRYING]
            found.append(FailingDestination(
                str(destination), min(d.failing_since for d in rows if d.failing_since),
                sum(d.state == DeliveryState.RETRYING for d in rows),
                sum(d.state == DeliveryState.FAILED for d in rows),
                min(nexts) if nexts else None, rows[0].last_error))
    return sorted(found, key=lambda f: f.failing_since)
