"""Study reports: once a study is quiet, write the SR of its most suspicious image.

A report is written when the study's result first exists and again whenever a late image
changes the decision; the new SR names the earlier one in its Predecessor Documents Sequence
and keeps its series. Which destinations get it is recorded as ``pending`` deliveries.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Report, Score, utcnow
from db.reports import StudyView, add_deliveries, insert_report, latest_report, study_view
from worker.report.content import PredecessorRef, SRError, StudyFinding
from worker.report.identity import ModelIdentity
from worker.report.sr import DEFAULT_SERIES_NUMBER, build_triage_sr, write_sr
from worker.score.decision import Decision, ImageResult, study_result

logger = logging.getLogger(__name__)

MANUFACTURER = "cxr-triage"


class DeliveryTarget(Protocol):
    """Where a report goes, as reporting sees it: a label and whether it is shadow only."""

    @property
    def label(self) -> str: ...

    @property
    def shadow(self) -> bool: ...


class ReportAction(enum.StrEnum):
    """What :func:`report_study` did."""

    WAIT = "wait"  # not quiet yet, or images still being scored: try again later
    WRITTEN = "written"  # a new revision was written and its deliveries recorded
    UNCHANGED = "unchanged"  # the latest revision already says this
    NOTHING_SCORED = "nothing_scored"  # no scored frontal image (all failed or skipped)
    LOST_RACE = "lost_race"  # another task wrote this revision first
    UNKNOWN = "unknown"  # no such study


@dataclass(frozen=True)
class ReportOptions:
    """The settings reporting uses."""

    report_dir: Path
    quiet_s: float = 10.0
    max_wait_s: float = 600.0
    worker_host: str = "localhost"


@dataclass(frozen=True)
class ReportOutcome:
    action: ReportAction
    report_id: int | None = None
    retry_in_s: float | None = None
    deliveries: tuple[str, ...] = ()


def image_result(instance: Instance, score: Score) -> ImageResult:
    """The study rule's view of one scored image."""
    return ImageResult(
        instance_id=instance.id,
        sop_instance_uid=instance.sop_instance_uid,
        decision=Decision(score.decision),
        probability_mean=score.probability_mean,
        probability_std=score.probability_std,
        fold_probabilities=tuple(float(p) for p in score.fold_probabilities),
    )


def _wait_for(view: StudyView, options: ReportOptions, now: dt.datetime) -> float | None:
    """Seconds to wait before the study may be reported, or ``None`` when it may be now."""
    since_last = (now - view.study.last_received_at).total_seconds()
    if since_last < options.quiet_s:
        return max(options.quiet_s - since_last, 0.1)
    if view.pending and since_last < options.max_wait_s:
        return max(options.quiet_s, 0.1)
    return None


def _headers(view: StudyView, best: ImageResult) -> list[Dataset]:
    """Headers of the scored images, the most suspicious first (read without pixels)."""
    ordered = sorted(view.scored, key=lambda pair: (pair[0].id != best.instance_id, pair[0].id))
    headers: list[Dataset] = []
    for instance, _ in ordered:
        try:
            headers.append(dcmread(instance.file_path, stop_before_pixels=True, force=True))
        except OSError as exc:
            raise SRError(f"study {view.study.study_instance_uid}: cannot read the header of "
                          f"instance {instance.id} ({exc}); is the storage mounted?") from exc
    return headers


def _write(view: StudyView, best: ImageResult, identity: ModelIdentity,
           previous: Report | None, options: ReportOptions,
           supersedes: Report | None = None) -> tuple[Path, Dataset]:
    """Build and write the SR file named after its SOP Instance UID."""
    headers = _headers(view, best)
    finding = StudyFinding(
        best.decision, best.probability_mean, best.probability_std,
        tuple(str(ds.SOPInstanceUID) for ds in headers), best.fold_probabilities)
    linked = previous or supersedes
    predecessor = None if linked is None else PredecessorRef(
        linked.sr_study_instance_uid, linked.sr_series_instance_uid, linked.sr_sop_instance_uid)
    sop_uid = generate_uid()
    sr = build_triage_sr(
        headers, finding, identity, manufacturer=MANUFACTURER, predecessor=predecessor,
        series_number=DEFAULT_SERIES_NUMBER,
        instance_number=1 if previous is None else previous.revision + 1,
        series_instance_uid=None if previous is None else previous.sr_series_instance_uid,
        sop_instance_uid=sop_uid)
    folder = options.report_dir / view.study.study_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    return write_sr(sr, folder / f"{sop_uid}.dcm"), sr


def _record(sessions: sessionmaker[Session], view: StudyView, best: ImageResult,
            model_version: str, previous: Report | None, path: Path, sr: Dataset,
            destinations: Sequence[DeliveryTarget], options: ReportOptions,
            supersedes: Report | None = None) -> int | None:
    finding_priority = StudyFinding(best.decision, best.probability_mean,
                                    best.probability_std, (best.sop_instance_uid,)).priority
    linked = previous or supersedes
    with sessions.begin() as session:
        report_id = insert_report(session, {
            "study_id": view.study.id, "model_version": model_version,
            "revision": 1 if previous is None else previous.revision + 1,
            "decision": best.decision.value, "priority": finding_priority.value,
            "probability_mean": best.probability_mean,
            "probability_std": best.probability_std,
            "source_instance_id": best.instance_id, "scored_instance_count": len(view.scored),
            "sr_study_instance_uid": str(sr.StudyInstanceUID),
            "sr_series_instance_uid": str(sr.SeriesInstanceUID),
            "sr_sop_instance_uid": str(sr.SOPInstanceUID), "file_path": str(path),
            "predecessor_id": None if linked is None else linked.id,
            "worker_host": options.worker_host,
        })
        if report_id is not None:
            add_deliveries(session, report_id, [(d.label, d.shadow) for d in destinations])
    return report_id


def report_study(sessions: sessionmaker[Session], study_id: int, *, identity: ModelIdentity,
                 model_version: str, destinations: Sequence[DeliveryTarget],
                 options: ReportOptions, now: dt.datetime | None = None,
                 supersedes: Report | None = None) -> ReportOutcome:
    """Write the study's report if it is quiet and its result is new (idempotent).

    The study result is that of its most suspicious scored image (``study_result``). A new
    revision is written only when the decision differs from the latest revision's under the
    same model version. ``supersedes`` (``cxr-triage rescore``): a report of another model
    version that the first report under this one names as its predecessor.
    """
    now = now or utcnow()
    with sessions() as session:
        view = study_view(session, study_id, model_version)
        previous = latest_report(session, study_id, model_version)
    if view is None:
        logger.warning("study %d: unknown, no report", study_id)
        return ReportOutcome(ReportAction.UNKNOWN)
    uid = view.study.study_instance_uid
    wait = _wait_for(view, options, now)
    if wait is not None:
        logger.debug("study %s: not quiet (%d pending), report in %.1f s", uid, view.pending, wait)
        return ReportOutcome(ReportAction.WAIT, retry_in_s=wait)
    if not view.scored:
        logger.info("study %s: no scored image, no report", uid)
        return ReportOutcome(ReportAction.NOTHING_SCORED)
    best = study_result([image_result(i, s) for i, s in view.scored])
    if previous is not None and previous.decision == best.decision.value:
        return ReportOutcome(ReportAction.UNCHANGED, report_id=previous.id)
    path, sr = _write(view, best, identity, previous, options, supersedes)
    report_id = _record(sessions, view, best, model_version, previous, path, sr,
                        destinations, options, supersedes)
    if report_id is None:
        path.unlink(missing_ok=True)
        logger.info("study %s: another task wrote this revision first", uid)
        return ReportOutcome(ReportAction.LOST_RACE)
    logger.info("study %s: report %d revision %d (%s, p=%.4f, %d images)%s", uid, report_id,
                1 if previous is None else previous.revision + 1, best.decision.value,
                best.probability_mean, len(view.scored),
                "" if previous is None else f", supersedes report {previous.id}")
    return ReportOutcome(ReportAction.WRITTEN, report_id=report_id,
                         deliveries=tuple(d.label for d in destinations))
