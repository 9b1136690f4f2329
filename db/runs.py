"""Re-scoring runs: queries on the ``rescore_run`` and ``rescore_failure`` tables (db.models).

A run records what one ``cxr-triage rescore`` did (counts, status, the distribution of mean
probabilities for ``cxr-triage drift``). Scores themselves live in ``score`` (the checkpoint:
an instance with a score under the run's model version for its current content is done);
instances that could not be scored are kept in ``rescore_failure`` with the reason, so a
second run does not try them again unless asked to (``--retry-failed``).

Like ``db.instances``, these functions never commit; the caller owns the transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session

from db.instances import dialect_insert
from db.models import (
    REASON_LENGTH,
    Decision,
    Instance,
    InstanceStatus,
    Report,
    RescoreFailure,
    RescoreRun,
    RunStatus,
    Score,
    Study,
    utcnow,
)

CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit


def chunks(ids: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    """``ids`` in slices of ``size``."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


# --- Selection ----------------------------------------------------------------------------------

SETTLED = (InstanceStatus.SCORED.value, InstanceStatus.FAILED.value)
UNSETTLED = (InstanceStatus.RECEIVED.value, InstanceStatus.QUEUED.value)
IN_FLIGHT = (*UNSETTLED, InstanceStatus.SCORING.value)


@dataclass(frozen=True)
class Selection:
    """Which stored instances a run looks at.

    ``since``/``until`` are inclusive UTC dates of receipt; ``include_unsettled`` adds
    instances the live pipeline has not scored yet (only safe under the live model version).
    """

    since: dt.date | None = None
    until: dt.date | None = None
    study_uids: tuple[str, ...] = ()
    only_unscored: bool = False
    include_unsettled: bool = False


@dataclass(frozen=True)
class ScopeRow:
    """One selected instance and whether it is already done under the run's model version."""

    instance_id: int
    study_id: int
    file_path: str
    content_sha256: str
    scored: bool
    failed: bool


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _filtered(query: Any, selection: Selection) -> Any:
    if selection.since is not None:
        query = query.where(Instance.received_at >= _utc(selection.since))
    if selection.until is not None:
        query = query.where(Instance.received_at < _utc(selection.until + dt.timedelta(days=1)))
    if selection.study_uids:
        query = query.where(Instance.study_id.in_(
            select(Study.id).where(Study.study_instance_uid.in_(selection.study_uids))))
    return query


def _score_exists(model_version: str) -> Any:
    return exists().where(Score.instance_id == Instance.id, Score.model_version == model_version,
                          Score.content_sha256 == Instance.content_sha256)


def select_scope(session: Session, selection: Selection, model_version: str) -> list[ScopeRow]:
    """The selected triage candidates (never ``skipped``), in id order, with their progress."""
    statuses = SETTLED + (UNSETTLED if selection.include_unsettled else ())
    failed = exists().where(RescoreFailure.instance_id == Instance.id,
                            RescoreFailure.model_version == model_version,
                            RescoreFailure.content_sha256 == Instance.content_sha256)
    query = select(Instance.id, Instance.study_id, Instance.file_path, Instance.content_sha256,
                   _score_exists(model_version).label("scored"), failed.label("failed"))
    query = _filtered(query.where(Instance.status.in_(statuses)), selection)
    if selection.only_unscored:
        query = query.where(~exists().where(
            Score.instance_id == Instance.id, Score.model_version != model_version,
            Score.content_sha256 == Instance.content_sha256))
    return [ScopeRow(int(r[0]), int(r[1]), str(r[2]), str(r[3]), bool(r[4]), bool(r[5]))
            for r in session.execute(query.order_by(Instance.id))]


def count_in_flight(session: Session, selection: Selection, include_unsettled: bool) -> int:
    """Selected instances left to the live pipeline (not yet settled, not taken by the run)."""
    statuses = (InstanceStatus.SCORING.value,) if include_unsettled else IN_FLIGHT
    query = _filtered(select(func.count(Instance.id)).where(Instance.status.in_(statuses)),
                      selection)
    return int(session.scalar(query) or 0)


def done_ids(session: Session, ids: Sequence[int], model_version: str) -> set[int]:
    """Which of ``ids`` have a score or a recorded failure under ``model_version``."""
    done: set[int] = set()
    for part in chunks(ids):
        done.update(int(i) for i in session.scalars(
            select(Score.instance_id).join(Instance, and_(
                Instance.id == Score.instance_id,
                Instance.content_sha256 == Score.content_sha256))
            .where(Score.instance_id.in_(part), Score.model_version == model_version)))
        done.update(int(i) for i in session.scalars(
            select(RescoreFailure.instance_id).join(Instance, and_(
                Instance.id == RescoreFailure.instance_id,
                Instance.content_sha256 == RescoreFailure.content_sha256))
            .where(RescoreFailure.instance_id.in_(part),
                   RescoreFailure.model_version == model_version)))
    return done


def instance_files(session: Session, ids: Sequence[int]) -> list[tuple[int, str, str]]:
    """(id, file path, content hash) of ``ids``, in id order."""
    rows: list[tuple[int, str, str]] = []
    for part in chunks(sorted(ids)):
        rows += [(int(i), str(p), str(h)) for i, p, h in session.execute(
            select(Instance.id, Instance.file_path, Instance.content_sha256)
            .where(Instance.id.in_(part)).order_by(Instance.id))]
    return rows


# --- Failures -----------------------------------------------------------------------------------


def record_failure(session: Session, run_id: int | None, instance_id: int, model_version: str,
                   content_sha256: str, reason: str) -> None:
    """Keep why an instance could not be scored (the instance's own status is not touched)."""
    values = {"run_id": run_id, "instance_id": instance_id, "model_version": model_version,
              "content_sha256": content_sha256, "reason": reason[:REASON_LENGTH],
              "created_at": utcnow()}
    session.execute(dialect_insert(session, RescoreFailure).values(**values).on_conflict_do_update(
        index_elements=["instance_id", "model_version", "content_sha256"],
        set_={"run_id": run_id, "reason": values["reason"], "created_at": values["created_at"]}))


def clear_failures(session: Session, ids: Sequence[int], model_version: str) -> int:
    """Forget recorded failures of ``ids`` so they are tried again; returns how many."""
    cleared = 0
    for part in chunks(ids):
        result = session.execute(delete(RescoreFailure).where(
            RescoreFailure.instance_id.in_(part), RescoreFailure.model_version == model_version))
        cleared += int(getattr(result, "rowcount", 0) or 0)
    return cleared


def failures(session: Session, ids: Sequence[int], model_version: str) -> dict[int, str]:
    """Instance id -> reason, for the failures of ``ids`` under ``model_version``."""
    found: dict[int, str] = {}
    for part in chunks(ids):
        for instance_id, reason in session.execute(
                select(RescoreFailure.instance_id, RescoreFailure.reason).where(
                    RescoreFailure.instance_id.in_(part),
                    RescoreFailure.model_version == model_version)):
            found[int(instance_id)] = str(reason)
    return found


# --- Scores and reports for the comparison ------------------------------------------------------


@dataclass(frozen=True)
class ScoreRow:
    """A score of an instance's current content, under any model version."""

    instance_id: int
    study_id: int
    sop_instance_uid: str
    model_version: str
    decision: Decision
    probability_mean: float
    probability_std: float
    fold_probabilities: tuple[float, ...]
    created_at: dt.datetime


def study_scores(session: Session, study_ids: Sequence[int]) -> list[ScoreRow]:
    """Every current-content score of the scored or failed instances of ``study_ids``."""
    rows: list[ScoreRow] = []
    for part in chunks(study_ids):
        query = (select(Score, Instance.study_id, Instance.sop_instance_uid)
                 .join(Instance, and_(Instance.id == Score.instance_id,
                                      Instance.content_sha256 == Score.content_sha256))
                 .where(Instance.study_id.in_(part), Instance.status.in_(SETTLED)))
        for score, study_id, sop_uid in session.execute(query):
            rows.append(ScoreRow(
                score.instance_id, int(study_id), str(sop_uid), score.model_version,
                score.decision, score.probability_mean, score.probability_std,
                tuple(float(p) for p in score.fold_probabilities), score.created_at))
    return rows


def study_uids(session: Session, study_ids: Sequence[int]) -> dict[int, str]:
    """Study id -> Study Instance UID."""
    found: dict[int, str] = {}
    for part in chunks(study_ids):
        for study_id, uid in session.execute(
                select(Study.id, Study.study_instance_uid).where(Study.id.in_(part))):
            found[int(study_id)] = str(uid)
    return found


def latest_report_any_version(session: Session, study_id: int) -> Report | None:
    """The most recent report of a study under any model version (the SR a new one supersedes)."""
    return session.scalars(
        select(Report).where(Report.study_id == study_id)
        .order_by(Report.created_at.desc(), Report.id.desc()).limit(1)).first()


def studies_reported_under(session: Session, study_ids: Sequence[int],
                           model_version: str) -> set[int]:
    """Which of ``study_ids`` already have a report under ``model_version``."""
    found: set[int] = set()
    for part in chunks(study_ids):
        found.update(int(i) for i in session.scalars(
            select(Report.study_id).where(Report.study_id.in_(part),
                                          Report.model_version == model_version)))
    return found


# --- Runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRun:
    """A run as it starts (``start_run``); the counts and results are filled in later."""

    model_version: str
    model_dir: str
    mode: str  # "local" or "distributed"
    host: str
    pid: int
    parameters: dict[str, Any]  # the request, as JSON


def start_run(session: Session, run: NewRun) -> int:
    """Insert a ``running`` run and return its id."""
    row = RescoreRun(status=RunStatus.RUNNING, started_at=utcnow(), probabilities=[],
                     **dataclasses.asdict(run))
    session.add(row)
    session.flush()
    return int(row.id)


def update_run(session: Session, run_id: int, **values: Any) -> None:
    """Set columns of a run."""
    session.execute(update(RescoreRun).where(RescoreRun.id == run_id).values(**values))


def running_runs(session: Session, host: str) -> list[tuple[int, int]]:
    """(id, pid) of the runs on ``host`` still marked ``running``."""
    return [(int(i), int(p)) for i, p in session.execute(
        select(RescoreRun.id, RescoreRun.pid).where(
            RescoreRun.host == host, RescoreRun.status == RunStatus.RUNNING.value))]


def finished_runs(session: Session, limit: int) -> list[RescoreRun]:
    """The last ``limit`` runs that finished with scores (succeeded or partial), oldest first."""
    rows = list(session.scalars(
        select(RescoreRun)
        .where(RescoreRun.status.in_([RunStatus.SUCCEEDED.value, RunStatus.PARTIAL.value]))
        .order_by(RescoreRun.id.desc()).limit(limit)))
    return rows[::-1]

