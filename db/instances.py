"""Repository functions: the only place that writes instances and studies.

Sessions are opened by the caller (``with factory.begin() as session:``); these functions never
commit, so the caller decides when a change is durable.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Instance, InstanceStatus, Study, utcnow


@dataclass(frozen=True)
class StudyFacts:
    """Study-level attributes copied from a received header."""

    study_instance_uid: str
    accession_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    study_description: str | None = None


@dataclass(frozen=True)
class NewInstance:
    """Everything the node knows about an instance once its file is durable."""

    study: StudyFacts
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    calling_ae: str
    file_path: str
    size_bytes: int
    transfer_syntax_uid: str
    content_sha256: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    status: InstanceStatus
    status_reason: str | None


class RecordOutcome(enum.StrEnum):
    """How a received instance relates to what was already recorded."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same content
    CHANGED = "changed"  # same SOP Instance UID, different content


@dataclass(frozen=True)
class RecordResult:
    """What :func:`record_instance` did.

    ``file_path`` is the file the row references now. ``previous_file_path`` is the file a
    ``CHANGED`` resend replaced, set only when no row references it any more: the caller may
    delete it once this transaction is committed.
    """

    instance_id: int
    outcome: RecordOutcome
    status: InstanceStatus
    previous_file_path: str | None = None
    file_path: str | None = None


def dialect_insert(session: Session, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """A dialect-specific INSERT that supports ``on_conflict_do_nothing``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def upsert_study(session: Session, facts: StudyFacts, now: dt.datetime) -> int:
    """Return the id of the study, creating it if needed (safe under concurrent associations)."""
    values = {
        "study_instance_uid": facts.study_instance_uid,
        "accession_number": facts.accession_number,
        "patient_id": facts.patient_id,
        "patient_name": facts.patient_name,
        "study_date": facts.study_date,
        "study_description": facts.study_description,
        "first_received_at": now,
        "last_received_at": now,
    }
    statement = dialect_insert(session, Study).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=["study_instance_uid"]))
    study_id = session.scalars(
        update(Study)
        .where(Study.study_instance_uid == facts.study_instance_uid)
        .values(last_received_at=now)
        .returning(Study.id)
    ).one()
    return int(study_id)


def _instance_values(item: NewInstance, study_id: int, now: dt.datetime) -> dict[str, Any]:
    return {
        "sop_instance_uid": item.sop_instance_uid,
        "sop_class_uid": item.sop_class_uid,
        "study_id": study_id,
        "series_instance_uid": item.series_instance_uid,
        "calling_ae": item.calling_ae,
        "received_at": now,
        "updated_at": now,
        "file_path": item.file_path,
        "size_bytes": item.size_bytes,
        "transfer_syntax_uid": item.transfer_syntax_uid,
        "content_sha256": item.content_sha256,
        "modality": item.modality,
        "body_part_examined": item.body_part_examined,
        "view_position": item.view_position,
        "status": item.status.value,
        "status_reason": item.status_reason,
        "receive_count": 1,
        "enqueue_count": 0,
    }


def record_instance(session: Session, item: NewInstance) -> RecordResult:
    """Record a received instance exactly once per SOP Instance UID.

    A resend with the same content only counts the receipt. A resend with different content
    replaces file, hash and header facts and goes back to triage (``CHANGED``).
    """
    now = utcnow()
    study_id = upsert_study(session, item.study, now)
    inserted = session.scalars(
        dialect_insert(session, Instance)
        .values(**_instance_values(item, study_id, now))
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(Instance.id)
    ).one_or_none()
    if inserted is not None:
        return RecordResult(int(inserted), RecordOutcome.NEW, item.status,
                            file_path=item.file_path)
    existing = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid).with_for_update()
    ).one()
    existing.receive_count += 1
    existing.updated_at = now
    if existing.content_sha256 == item.content_sha256:
        return RecordResult(existing.id, RecordOutcome.DUPLICATE, InstanceStatus(existing.status),
                            file_path=existing.file_path)
    previous_path = existing.file_path
    values = _instance_values(item, study_id, now)
    for name in ("sop_class_uid", "series_instance_uid", "calling_ae", "received_at", "file_path",
                 "size_bytes", "transfer_syntax_uid", "content_sha256", "modality",
                 "body_part_examined", "view_position", "status", "status_reason", "study_id"):
        setattr(existing, name, values[name])
    existing.enqueued_at = None
    session.flush()
    superseded = None if file_referenced(session, previous_path) else previous_path
    return RecordResult(existing.id, RecordOutcome.CHANGED, item.status, superseded,
                        file_path=item.file_path)


def file_referenced(session: Session, file_path: str) -> bool:
    """Whether any instance row references ``file_path``."""
    return session.scalar(
        select(Instance.id).where(Instance.file_path == file_path).limit(1)
    ) is not None


def mark_enqueued(session: Session, instance_id: int) -> bool:
    """Move a ``received`` instance to ``queued``; ``False`` if it had already moved on."""
    now = utcnow()
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.status == InstanceStatus.RECEIVED.value)
        .values(
            status=InstanceStatus.QUEUED.value,
            enqueued_at=now,
            updated_at=now,
            enqueue_count=Instance.enqueue_count + 1,
        )
    )
    return bool(getattr(result, "rowcount", 0))


def stale_received(session: Session, older_than: dt.datetime, limit: int = 500) -> list[int]:
    """Ids of instances left ``received`` since before ``older_than`` (for the sweeper)."""
    rows = session.scalars(
        select(Instance.id)
        .where(
            Instance.status == InstanceStatus.RECEIVED.value,
            Instance.received_at < older_than,
        )
        .order_by(Instance.received_at)
        .limit(limit)
    )
    return [int(row) for row in rows]


@dataclass(frozen=True)
class StudyState:
    """A study and its instances, read together."""

    study: Study
    instances: Sequence[Instance]


def study_state(session: Session, study_instance_uid: str) -> StudyState | None:
    """Read one study and all its instances with a single indexed query."""
    rows = session.execute(
        select(Study, Instance)
        .outerjoin(Instance, Instance.study_id == Study.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(Instance.received_at)
    ).all()
    if not rows:
        return None
    instances = [instance for _, instance in rows if instance is not None]
    return StudyState(study=rows[0][0], instances=instances)
