"""Retention: which old instances, scores and claims may go (``cxr-triage purge``).

An instance may be purged when it was received before the cut-off, has finished (scored,
skipped or failed: one still in the pipeline is the reconciler's to finish) and no report names
it as its source. Its scores, claim and re-scoring failures go with it. Reports, their SR files
and their source instances (with those instances' scores) are kept, as is every study that still
has an instance, a report or a label. The caller commits (or, for a dry run, rolls back), then
deletes the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import (
    Instance,
    InstanceStatus,
    Report,
    RescoreFailure,
    Score,
    ScoreClaim,
    Study,
    StudyLabel,
)

FINISHED = (InstanceStatus.SCORED, InstanceStatus.SKIPPED, InstanceStatus.FAILED)
_CHUNK = 500  # ids per DELETE ... IN (...): well under SQLite's bound-parameter limit


@dataclass(frozen=True)
class PurgeCandidate:
    """One instance to purge: its row id and the file to delete after the commit."""

    instance_id: int
    file_path: str


@dataclass(frozen=True)
class PurgeCounts:
    """What a purge removed (or, in a dry run, would remove)."""

    instances: int = 0
    scores: int = 0
    claims: int = 0
    rescore_failures: int = 0
    studies: int = 0
    kept_for_reports: int = 0


def purge_candidates(session: Session, cutoff: dt.datetime) -> list[PurgeCandidate]:
    """Finished instances received before ``cutoff`` that no report references."""
    referenced = exists().where(Report.source_instance_id == Instance.id)
    rows = session.execute(
        select(Instance.id, Instance.file_path)
        .where(Instance.received_at < cutoff, Instance.status.in_(FINISHED), ~referenced)
        .order_by(Instance.id)
    )
    return [PurgeCandidate(int(row.id), str(row.file_path)) for row in rows]


def kept_for_reports(session: Session, cutoff: dt.datetime) -> int:
    """How many instances older than ``cutoff`` are kept because a report references them."""
    referenced = exists().where(Report.source_instance_id == Instance.id)
    return len(session.scalars(
        select(Instance.id).where(Instance.received_at < cutoff, referenced)).all())


def _count(session: Session, column: InstrumentedAttribute[int], ids: Sequence[int]) -> int:
    total = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        total += int(session.scalar(select(func.count()).where(column.in_(chunk))) or 0)
    return total


def _delete(session: Session, table: type, column: InstrumentedAttribute[int],
            ids: Sequence[int]) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        session.execute(delete(table).where(column.in_(chunk)))


def _orphan_studies(session: Session) -> list[int]:
    """Studies with no instance, no report and no label left."""
    return list(session.scalars(
        select(Study.id).where(
            ~exists().where(Instance.study_id == Study.id),
            ~exists().where(Report.study_id == Study.id),
            ~exists().where(StudyLabel.study_id == Study.id),
        )
    ))


def purge_rows(session: Session, candidates: Sequence[PurgeCandidate]) -> PurgeCounts:
    """Delete the rows of ``candidates`` and the studies left empty; never commits.

    A dry run calls this too and rolls the transaction back, so it counts exactly what the real
    run would remove.
    """
    ids = [c.instance_id for c in candidates]
    counts = {
        "scores": _count(session, Score.instance_id, ids),
        "claims": _count(session, ScoreClaim.instance_id, ids),
        "rescore_failures": _count(session, RescoreFailure.instance_id, ids),
    }
    _delete(session, Score, Score.instance_id, ids)
    _delete(session, ScoreClaim, ScoreClaim.instance_id, ids)
    _delete(session, RescoreFailure, RescoreFailure.instance_id, ids)
    _delete(session, Instance, Instance.id, ids)
    session.flush()
    orphans = _orphan_studies(session)
    _delete(session, Study, Study.id, orphans)
    return PurgeCounts(instances=len(ids), studies=len(orphans), **counts)
