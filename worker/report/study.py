"""Study reports: once a study is quiet, write the SR of its most suspicious image.

A report is written when the study's result first exists and again whenever a late image
changes the decision; the new SR names the earlier one in its Predecessor Documents Sequence
and is a series of its own: Series Number 9900 + n for the study's n-th report under any model
version, and a Series Description that states the decision, the priority and the revision
(``worker.report.content``). Which destinations get it is recorded as ``pending`` deliveries.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import DeliveryItem, Instance, Report, Score, utcnow
from db.recovery import (
    ReportFailure,
    postpone_report,
    record_report_failure,
    report_state,
    settle_report,
)
from db.reports import (
    DeliveryTargetRow,
    NewReport,
    StudyView,
    add_deliveries,
    insert_report,
    latest_report,
    rescore_for_live_model,
    study_view,
)
from worker.report.content import PredecessorRef, StudyFinding, sr_series_number
from worker.report.identity import ModelIdentity
from worker.report.result_image import (
    ImageFinding,
    Placement,
    ResultImageEnsemble,
    ResultImageError,
    WrittenImage,
    image_series_number,
    make_result_image,
    wanted,
)
from worker.report.sources import SourceUnavailableError, source_header
from worker.report.sr import build_triage_sr, write_sr
from worker.retry_policy import backoff_s, describe, is_transient
from worker.score.decision import Decision, ImageResult, study_result
from worker.settings import ResultImageMode

logger = logging.getLogger(__name__)

MANUFACTURER = "cxr-triage"
# The loaded ensemble (fp32 fold models) for the result image's heatmap, asked for only when a
# study gets a result image (the worker's ``WorkerContext.ensemble``, rescore's loaded model).
EnsembleSource = Callable[[], ResultImageEnsemble]
_EARLY_S = 1.0  # a report message this much before the study's due time still runs


class DeliveryTarget(Protocol):
    """Where a report goes, as reporting sees it: a label, whether it is shadow only, and
    which items of a report it takes (SR, result image, HL7 message)."""

    @property
    def label(self) -> str: ...

    @property
    def shadow(self) -> bool: ...

    @property
    def items(self) -> tuple[DeliveryItem, ...]: ...


class ReportAction(enum.StrEnum):
    """What :func:`report_study` did."""

    WAIT = "wait"  # not quiet yet, or images still being scored: try again later
    WRITTEN = "written"  # a new revision was written and its deliveries recorded
    UNCHANGED = "unchanged"  # the latest revision already says this
    NOTHING_SCORED = "nothing_scored"  # no scored frontal image (all failed or skipped)
    LOST_RACE = "lost_race"  # another task wrote this revision first
    UNKNOWN = "unknown"  # no such study
    RETRY = "retry"  # failed on something that may pass (disk full, database): tried again
    NOT_DUE = "not_due"  # an early or duplicate message: the study's due time is later
    FAILED = "failed"  # failed for good; the study records the reason


@dataclass(frozen=True)
class ReportOptions:
    """The settings reporting uses (built from ``WorkerSettings`` by ``worker.runtime``)."""

    report_dir: Path
    quiet_s: float
    max_wait_s: float
    worker_host: str
    retry_backoff_s: float  # a failed report is tried again after this, doubling ...
    retry_backoff_max_s: float  # ... up to this
    result_image: ResultImageMode = ResultImageMode.FLAGGED  # which studies get a result image


@dataclass(frozen=True)
class ReportOutcome:
    action: ReportAction
    report_id: int | None = None
    retry_in_s: float | None = None
    deliveries: tuple[tuple[str, DeliveryItem], ...] = ()  # (destination label, item)
    reason: str = ""  # RETRY, FAILED: what went wrong


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


def _headers(view: StudyView, best: ImageResult, *, minimal: bool) -> list[Dataset]:
    """Source headers of the scored images from the recorded facts (``worker.report.sources``),
    the most suspicious first."""
    ordered = sorted(view.scored, key=lambda pair: (pair[0].id != best.instance_id, pair[0].id))
    return [source_header(view.study, instance, minimal=minimal) for instance, _ in ordered]


def _build(view: StudyView, best: ImageResult, identity: ModelIdentity,
           previous: Report | None, supersedes: Report | None, *, minimal: bool) -> Dataset:
    """The SR of the study's result, not yet written: a new series, numbered after the
    study's earlier reports of any model version, with the threshold the result's score used."""
    headers = _headers(view, best, minimal=minimal)
    threshold = next((float(score.threshold) for instance, score in view.scored
                      if instance.id == best.instance_id), None)
    finding = StudyFinding(
        best.decision, best.probability_mean, best.probability_std,
        tuple(str(ds.SOPInstanceUID) for ds in headers), best.fold_probabilities, threshold)
    linked = previous or supersedes
    predecessor = None if linked is None else PredecessorRef(
        linked.sr_study_instance_uid, linked.sr_series_instance_uid, linked.sr_sop_instance_uid)
    sop_uid = generate_uid()
    sr = build_triage_sr(
        headers, finding, identity, manufacturer=MANUFACTURER, predecessor=predecessor,
        series_number=sr_series_number(view.reports), revision=view.reports + 1,
        sop_instance_uid=sop_uid)
    return sr


def _write(view: StudyView, best: ImageResult, identity: ModelIdentity,
           previous: Report | None, options: ReportOptions,
           supersedes: Report | None = None) -> tuple[Path, Dataset]:
    """Build and write the SR file named after its SOP Instance UID.

    When the readable part of the image headers still can't make a valid SR, the SR is built
    again from the recorded facts and the image size alone.
    """
    try:
        sr = _build(view, best, identity, previous, supersedes, minimal=False)
    except Exception as exc:
        if isinstance(exc, SourceUnavailableError) or is_transient(exc):
            raise
        logger.warning("study %s: no SR from the image headers (%s); building it from the "
                       "recorded facts", view.study.study_instance_uid, type(exc).__name__)
        sr = _build(view, best, identity, previous, supersedes, minimal=True)
    folder = options.report_dir / view.study.study_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    return write_sr(sr, folder / f"{sr.SOPInstanceUID}.dcm"), sr


def _record(sessions: sessionmaker[Session], view: StudyView, best: ImageResult,
            model_version: str, previous: Report | None, path: Path, sr: Dataset,
            destinations: Sequence[DeliveryTarget], options: ReportOptions,
            supersedes: Report | None = None, image: WrittenImage | None = None) -> int | None:
    finding_priority = StudyFinding(best.decision, best.probability_mean,
                                    best.probability_std, (best.sop_instance_uid,)).priority
    linked = previous or supersedes
    with sessions.begin() as session:
        report_id = insert_report(session, NewReport(
            study_id=view.study.id, model_version=model_version,
            revision=1 if previous is None else previous.revision + 1,
            decision=best.decision, priority=finding_priority,
            probability_mean=best.probability_mean, probability_std=best.probability_std,
            source_instance_id=best.instance_id, scored_instance_count=len(view.scored),
            sr_study_instance_uid=str(sr.StudyInstanceUID),
            sr_series_instance_uid=str(sr.SeriesInstanceUID),
            sr_sop_instance_uid=str(sr.SOPInstanceUID), file_path=str(path),
            predecessor_id=None if linked is None else linked.id,
            worker_host=options.worker_host, sr_series_number=int(sr.SeriesNumber),
            image_series_instance_uid=None if image is None else image.series_instance_uid,
            image_sop_instance_uid=None if image is None else image.sop_instance_uid,
            image_series_number=None if image is None else image.series_number,
            image_file_path=None if image is None else str(image.path)))
        if report_id is not None:
            add_deliveries(session, report_id, delivery_rows(destinations,
                                                             has_image=image is not None))
    return report_id


def _result_image(view: StudyView, best: ImageResult, identity: ModelIdentity,
                  model_version: str, sr: Dataset, options: ReportOptions,
                  ensemble: EnsembleSource | None) -> WrittenImage | None:
    """Write the result image beside the SR when ``TRIAGE_RESULT_IMAGE`` asks for one.

    Nothing it raises stops the report: without an image the SR is recorded and delivered
    alone, and the reason is logged (type and place, never a header value).
    """
    if not wanted(options.result_image, best.decision):
        return None
    instance, score = next((i, s) for i, s in view.scored if i.id == best.instance_id)
    stored_cam = None if score.cam is None else np.asarray(score.cam, dtype=np.float32)
    if ensemble is None and stored_cam is None:
        return None
    uid = view.study.study_instance_uid
    try:
        model = None
        if stored_cam is None and ensemble is not None:  # an older score: run Grad-CAM
            model = ensemble()
            if model.model_version != model_version:
                raise ResultImageError(f"the loaded ensemble is {model.model_version}, "
                                       f"the report's {model_version}")
        finding = ImageFinding(
            best.decision, StudyFinding(best.decision, best.probability_mean,
                                        best.probability_std, (best.sop_instance_uid,)).priority,
            best.probability_mean, best.probability_std, len(best.fold_probabilities),
            float(score.threshold), revision=view.reports + 1)
        placement = Placement(generate_uid(), generate_uid(),
                              image_series_number(int(sr.SeriesNumber)))
        return make_result_image(Path(instance.file_path), source_header(view.study, instance),
                                 finding, identity, model, placement,
                                 options.report_dir / uid, manufacturer=MANUFACTURER,
                                 stored_cam=stored_cam)
    except Exception as exc:  # the SR goes out without the image
        logger.warning("study %s: no result image (%s at %s); the SR is sent without it",
                       uid, type(exc).__name__, _where(exc))
        return None


def delivery_rows(destinations: Sequence[DeliveryTarget], *,
                  has_image: bool = False) -> list[DeliveryTargetRow]:
    """What each destination gets of a report: each item it takes that the report has."""
    return [DeliveryTargetRow(d.label, d.shadow, item)
            for d in destinations for item in d.items
            if item is not DeliveryItem.IMAGE or has_image]


def report_study(sessions: sessionmaker[Session], study_id: int, *, identity: ModelIdentity,
                 model_version: str, destinations: Sequence[DeliveryTarget],
                 options: ReportOptions, now: dt.datetime | None = None,
                 supersedes: Report | None = None,
                 ensemble: EnsembleSource | None = None) -> ReportOutcome:
    """Write the study's report if it is quiet and its result is new (idempotent).

    The study result is that of its most suspicious scored image (``study_result``). A new
    revision is written only when the decision differs from the latest revision's under the
    same model version. ``supersedes`` (``cxr-triage rescore``): a report of another model
    version that the first report under this one names as its predecessor. ``ensemble``: where
    the result image's heatmap comes from (no result image without it).
    """
    now = now or utcnow()
    with sessions.begin() as session:
        view = study_view(session, study_id, model_version)
        previous = latest_report(session, study_id, model_version)
        requeued = 0 if view is None else rescore_for_live_model(session, study_id, model_version)
    if view is None:
        logger.warning("study %d: unknown, no report", study_id)
        return ReportOutcome(ReportAction.UNKNOWN)
    uid = view.study.study_instance_uid
    if requeued:
        logger.info("study %s: %d images scored under another model version go back to be "
                    "scored by %s before the report", uid, requeued, model_version)
        return ReportOutcome(ReportAction.WAIT, retry_in_s=max(options.quiet_s, 0.1))
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
    image = _result_image(view, best, identity, model_version, sr, options, ensemble)
    written = [path] if image is None else [path, image.path]
    try:
        report_id = _record(sessions, view, best, model_version, previous, path, sr,
                            destinations, options, supersedes, image)
    except BaseException:
        for file in written:  # not recorded: the next attempt writes new ones
            file.unlink(missing_ok=True)
        raise
    if report_id is None:
        for file in written:
            file.unlink(missing_ok=True)
        logger.info("study %s: another task wrote this revision first", uid)
        return ReportOutcome(ReportAction.LOST_RACE)
    logger.info("study %s: report %d revision %d (%s, p=%.4f, %d images)%s", uid, report_id,
                1 if previous is None else previous.revision + 1, best.decision.value,
                best.probability_mean, len(view.scored),
                "" if previous is None else f", supersedes report {previous.id}")
    return ReportOutcome(ReportAction.WRITTEN, report_id=report_id,
                         deliveries=tuple((row.destination, row.item) for row in delivery_rows(
                             destinations, has_image=image is not None)))


def report_step(sessions: sessionmaker[Session], study_id: int, *, identity: ModelIdentity,
                model_version: str, destinations: Sequence[DeliveryTarget],
                options: ReportOptions, now: dt.datetime | None = None,
                only_when_due: bool = False,
                ensemble: EnsembleSource | None = None) -> ReportOutcome:
    """:func:`report_study` as the report task runs it: nothing it raises is lost.

    The outcome is recorded on the study for the node's reconciler: a new due time (WAIT, or
    RETRY with backoff after a failure that may pass), or none (done, or FAILED for good with
    the reason). A database error while recording propagates (the task retries; the due time
    stays, so the reconciler publishes the study again). ``only_when_due`` (the task): do
    nothing while the study's due time is later, so that a duplicated message (a countdown and
    the reconciler's) doesn't start a second chain of retries.
    """
    now = now or utcnow()
    with sessions() as session:
        state = report_state(session, study_id)  # before the study is read: see settle_report
    if state is None:
        logger.warning("study %d: unknown, no report", study_id)
        return ReportOutcome(ReportAction.UNKNOWN)
    early = dt.timedelta(seconds=_EARLY_S)
    if only_when_due and state.due_at is not None and state.due_at > now + early:
        return ReportOutcome(ReportAction.NOT_DUE)
    generation, attempts = state.generation, state.attempts
    try:
        outcome = report_study(sessions, study_id, identity=identity,
                               model_version=model_version, destinations=destinations,
                               options=options, now=now, ensemble=ensemble)
    except Exception as exc:  # every failure is recorded with its reason
        return _record_failure(sessions, study_id, generation, attempts + 1, exc, options, now)
    with sessions.begin() as session:
        if outcome.action is ReportAction.WAIT and outcome.retry_in_s is not None:
            postpone_report(session, study_id, now + dt.timedelta(seconds=outcome.retry_in_s))
        else:
            settle_report(session, study_id, generation)
    return outcome


def report_failed(sessions: sessionmaker[Session], study_id: int, exc: Exception,
                  options: ReportOptions, now: dt.datetime | None = None) -> ReportOutcome:
    """Record a report attempt that failed before :func:`report_step` could run (the model's
    manifest can't be read, say) like any other failed attempt."""
    with sessions() as session:
        state = report_state(session, study_id)
    if state is None:
        return ReportOutcome(ReportAction.UNKNOWN)
    return _record_failure(sessions, study_id, state.generation, state.attempts + 1, exc,
                           options, now or utcnow())


def _record_failure(sessions: sessionmaker[Session], study_id: int, generation: int,
                    attempt: int, exc: Exception, options: ReportOptions,
                    now: dt.datetime) -> ReportOutcome:
    """Record a failed attempt: retried with backoff when it may pass, else ``failed``."""
    reason = f"report attempt {attempt}: {describe(exc)}"
    where = _where(exc)
    if is_transient(exc):
        wait = backoff_s(attempt, base_s=options.retry_backoff_s,
                         max_s=options.retry_backoff_max_s)
        failure = ReportFailure(reason, now + dt.timedelta(seconds=wait), now)
        logger.warning("study %d: report attempt %d failed (%s at %s); retry in %.0f s",
                       study_id, attempt, type(exc).__name__, where, wait)
        outcome = ReportOutcome(ReportAction.RETRY, retry_in_s=wait, reason=reason)
    else:
        failure = ReportFailure(reason, None, now)
        logger.error("study %d: report failed (%s at %s); recorded as failed", study_id,
                     type(exc).__name__, where)
        outcome = ReportOutcome(ReportAction.FAILED, reason=reason)
    with sessions.begin() as session:
        record_report_failure(session, study_id, generation, failure)
    return outcome


def _where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (logged instead of a message that may quote
    header values)."""
    trace = exc.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is None:
        return "?"
    return f"{Path(trace.tb_frame.f_code.co_filename).name}:{trace.tb_lineno}"
