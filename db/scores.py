"""Repository of the worker's results: score claims, scores, reports and deliveries.

Like ``db.instances``, these functions never commit; the caller owns the transaction
(``with sessions.begin() as session:``). Every write is idempotent: unique constraints plus
``ON CONFLICT DO NOTHING`` make a task delivered twice leave one row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from db.instances import dialect_insert
from db.models import (
    REASON_LENGTH,
    Instance,
    InstanceStatus,
    Score,
    ScoreClaim,
    utcnow,
)

# --- Claims -------------------------------------------------------------------------------------


def _stamp_claims(session: Session, ids: Sequence[int], token: str, now: dt.datetime) -> None:
    for instance_id in ids:
        statement = dialect_insert(session, ScoreClaim).values(
            instance_id=instance_id, token=token, claimed_at=now)
        session.execute(statement.on_conflict_do_update(
            index_elements=["instance_id"], set_={"token": token, "claimed_at": now}))


def claim_lead(session: Session, instance_id: int, token: str, lease_cutoff: dt.datetime) -> bool:
    """Claim the task's own instance; ``False`` when there is nothing for this task to do.

    Claimable: ``received`` or ``queued``; or ``scoring`` under this same task id (a redelivery
    after the worker died) or under a claim older than ``lease_cutoff``.
    """
    now = utcnow()
    live_other = exists().where(
        ScoreClaim.instance_id == instance_id,
        ScoreClaim.token != token,
        ScoreClaim.claimed_at >= lease_cutoff,
    )
    claimed = session.scalars(
        update(Instance)
        .where(Instance.id == instance_id)
        .where(or_(
            Instance.status.in_([InstanceStatus.RECEIVED.value, InstanceStatus.QUEUED.value]),
            and_(Instance.status == InstanceStatus.SCORING.value, ~live_other),
        ))
        .values(status=InstanceStatus.SCORING.value, updated_at=now)
        .returning(Instance.id)
    ).one_or_none()
    if claimed is None:
        return False
    _stamp_claims(session, [instance_id], token, now)
    return True


def claim_more(session: Session, lead_id: int, token: str, limit: int,
               exclude: Sequence[int] = ()) -> list[int]:
    """Claim up to ``limit`` more instances to score with the lead: first those this task
    claimed before it was interrupted, then the oldest ``queued`` ones no one has locked.

    ``exclude``: claims of this task still in hand (a batch being predicted while the next
    one is claimed) that are not to be claimed again.
    """
    if limit <= 0:
        return []
    now = utcnow()
    own = list(session.scalars(
        select(ScoreClaim.instance_id)
        .join(Instance, Instance.id == ScoreClaim.instance_id)
        .where(ScoreClaim.token == token, ScoreClaim.instance_id != lead_id,
               ScoreClaim.instance_id.not_in(exclude),
               Instance.status == InstanceStatus.SCORING.value)
        .limit(limit)
    ))
    free = [] if limit <= len(own) else list(session.scalars(
        select(Instance.id)
        .where(Instance.status == InstanceStatus.QUEUED.value, Instance.id != lead_id)
        .order_by(Instance.received_at, Instance.id)
        .limit(limit - len(own))
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers anyway
    ))
    fresh = list(session.scalars(
        update(Instance)
        .where(Instance.id.in_(free), Instance.status == InstanceStatus.QUEUED.value)
        .values(status=InstanceStatus.SCORING.value, updated_at=now)
        .returning(Instance.id)
    )) if free else []
    ids = [int(i) for i in own] + [int(i) for i in fresh]
    _stamp_claims(session, ids, token, now)
    return ids


@dataclass(frozen=True)
class ClaimedImage:
    """What scoring needs of a claimed instance."""

    instance_id: int
    study_id: int
    sop_instance_uid: str
    file_path: str
    content_sha256: str


def claimed_images(session: Session, ids: Sequence[int]) -> list[ClaimedImage]:
    """The claimed rows, in id order."""
    rows = session.scalars(select(Instance).where(Instance.id.in_(ids)).order_by(Instance.id))
    return [ClaimedImage(r.id, r.study_id, r.sop_instance_uid, r.file_path, r.content_sha256)
            for r in rows]


def release_claims(session: Session, ids: Sequence[int], token: str) -> None:
    """Give instances back as ``received`` (the node's sweeper publishes them again)."""
    session.execute(
        update(Instance)
        .where(Instance.id.in_(ids), Instance.status == InstanceStatus.SCORING.value)
        .values(status=InstanceStatus.RECEIVED.value, updated_at=utcnow())
    )
    session.execute(delete(ScoreClaim).where(
        ScoreClaim.instance_id.in_(ids), ScoreClaim.token == token))


# --- Scores -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewScore:
    """One image's ensemble output under one model version, as the ``score`` row stores it."""

    instance_id: int
    model_version: str
    content_sha256: str
    probability_mean: float
    probability_std: float
    fold_probabilities: tuple[float, ...]
    fold_votes: int
    threshold: float
    decision: str
    latency_ms: float
    batch_size: int
    device: str
    worker_host: str
    created_at: dt.datetime = field(default_factory=utcnow)
    cam: tuple[tuple[float, ...], ...] | None = None  # fold-mean Grad-CAM grid (score.cam)

    def values(self) -> dict[str, Any]:
        """The column values of the row."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["fold_probabilities"] = list(self.fold_probabilities)  # a JSON array
        values["cam"] = None if self.cam is None else [list(row) for row in self.cam]
        return values


def record_score(session: Session, score: NewScore) -> bool:
    """Insert one score (once per instance, model version and content) and mark it ``scored``.

    Returns whether a new row was written (``False``: a duplicate delivery already had).
    """
    inserted = session.scalars(
        dialect_insert(session, Score).values(**score.values()).on_conflict_do_nothing(
            index_elements=["instance_id", "model_version", "content_sha256"])
        .returning(Score.id)
    ).one_or_none()
    session.execute(
        update(Instance)
        .where(Instance.id == score.instance_id,
               Instance.content_sha256 == score.content_sha256)
        .values(status=InstanceStatus.SCORED.value, status_reason=None, updated_at=utcnow())
    )
    return inserted is not None


def mark_failed(session: Session, instance_id: int, content_sha256: str, reason: str) -> None:
    """Record that an instance's content can't be scored, and why (never dropped silently).

    Only the content that failed is marked: a resend with other content that arrived in the
    meantime keeps its own status (as ``record_score`` does).
    """
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.content_sha256 == content_sha256)
        .values(status=InstanceStatus.FAILED.value, status_reason=reason[:REASON_LENGTH],
                updated_at=utcnow())
    )


def instance_state(session: Session, instance_id: int) -> tuple[str, int] | None:
    """(status, study id) of an instance, or ``None`` when unknown."""
    row = session.execute(
        select(Instance.status, Instance.study_id).where(Instance.id == instance_id)).one_or_none()
    return None if row is None else (str(row[0]), int(row[1]))
