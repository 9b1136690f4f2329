"""Re-scoring stored instances with an ensemble: select, score, compare, report, record the run.

The score table is the checkpoint: an instance is done under a model version once it has a
score for its current content (or a recorded failure), each batch is committed as it
finishes, so an interrupted run continues where it stopped and a repeated run does nothing.
Every run is recorded in ``rescore_run`` (counts, status, the distribution of mean
probabilities) for ``cxr-triage drift``. docs/rescore.md describes flags and exit codes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.errors import TriageError
from db.models import RunStatus, utcnow
from db.runs import (
    NewRun,
    ScopeRow,
    Selection,
    clear_failures,
    count_in_flight,
    failures,
    running_runs,
    select_scope,
    start_run,
    study_scores,
    study_uids,
    update_run,
)
from training.manifest import EnsembleManifest, load_manifest
from worker import hooks
from worker.deliver.channels import channel_sender, commitment_hook
from worker.deliver.destinations import parse_destinations
from worker.models.store import live_model_dir
from worker.report.identity import model_identity
from worker.rescore.compare import Comparison, compare
from worker.rescore.distributed import score_distributed
from worker.rescore.dryrun import dry_run_outcome
from worker.rescore.loader import decoded_batches
from worker.rescore.progress import Progress
from worker.rescore.report import (
    ReportSummary,
    SendMode,
    deliver_inline,
    queue_deliveries,
    studies_to_report,
    write_reports,
)
from worker.runtime import delivery_options, report_options
from worker.score.batch import ImageRef, RunFailures, ScoringContext, score_batch
from worker.score.ensemble import Ensemble
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


class RescoreError(TriageError):
    """A re-scoring run can't start or can't go on."""


@dataclass(frozen=True)
class RescoreRequest:
    """One ``cxr-triage rescore`` invocation, flags resolved."""

    model_dir: Path
    selection: Selection = field(default_factory=Selection)
    send: SendMode = SendMode.CHANGED
    dry_run: bool = False
    distributed: bool = False
    retry_failed: bool = False

    def parameters(self) -> dict[str, Any]:
        """The flags as recorded in ``rescore_run.parameters``."""
        s = self.selection
        return {"since": s.since.isoformat() if s.since else None,
                "until": s.until.isoformat() if s.until else None,
                "studies": list(s.study_uids), "only_unscored": s.only_unscored,
                "send": self.send.value, "distributed": self.distributed,
                "retry_failed": self.retry_failed, "model_dir": str(self.model_dir)}


@dataclass
class RescoreResult:
    """What a run did; ``exit_code`` is what the command returns."""

    model_version: str
    run_id: int | None = None
    status: RunStatus = RunStatus.RUNNING
    selected: int = 0
    already_scored: int = 0
    to_score: int = 0
    scored_now: int = 0
    failed_now: dict[int, str] = field(default_factory=dict)
    failed_before: int = 0
    in_flight: int = 0
    comparison: Comparison = field(default_factory=Comparison)
    study_uids: dict[int, str] = field(default_factory=dict)
    reports: ReportSummary = field(default_factory=ReportSummary)
    would_report: tuple[int, ...] = ()  # dry run: the studies the real run would report
    send: SendMode = SendMode.CHANGED
    message: str | None = None

    @property
    def exit_code(self) -> int:
        return {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 3}.get(self.status, 1)


def _manifest(model_dir: Path) -> EnsembleManifest:
    try:
        return load_manifest(model_dir, verify_hashes=False)
    except TriageError as exc:
        raise RescoreError(f"cannot use --model {model_dir}: {exc}") from exc


def live_model_version(sessions: sessionmaker[Session], settings: WorkerSettings) -> str | None:
    """The model version the live workers score with: the promoted one, else the one in
    TRIAGE_MODEL_DIR (if readable)."""
    with sessions() as session:
        live = live_model_dir(session)
    if live is not None:
        return live[0]
    try:
        return load_manifest(settings.model_dir, verify_hashes=False).model_version
    except TriageError:
        return None


def mark_interrupted(sessions: sessionmaker[Session], host: str) -> list[int]:
    """Runs on this host still ``running`` whose process is gone become ``interrupted``."""
    gone = []
    with sessions.begin() as session:
        for run_id, pid in running_runs(session, host):
            try:
                os.kill(pid, 0)
                continue  # still alive: a concurrent run
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            update_run(session, run_id, status=RunStatus.INTERRUPTED.value, finished_at=utcnow(),
                       message="the process ended without finishing; a later run continued it")
            gone.append(run_id)
    return gone


def plan(sessions: sessionmaker[Session], request: RescoreRequest, model_version: str,
         live_version: str | None) -> tuple[Selection, list[ScopeRow], int]:
    """The run's scope, and how many selected instances are still with the live pipeline.

    Instances the live pipeline has not scored yet are included only when the run's model is
    the live one (scoring them under another version would take them from the live model).
    """
    selection = dataclasses.replace(request.selection,
                                    include_unsettled=model_version == live_version)
    with sessions.begin() as session:
        rows = select_scope(session, selection, model_version)
        if request.retry_failed and not request.dry_run:
            retried = [r.instance_id for r in rows if r.failed]
            if retried and clear_failures(session, retried, model_version):
                rows = select_scope(session, selection, model_version)
        in_flight = count_in_flight(session, selection, selection.include_unsettled)
    return selection, rows, in_flight


def score_local(sessions: sessionmaker[Session], model: Ensemble, todo: Sequence[ImageRef], *,
                run_id: int, worker: WorkerSettings) -> int:
    """Score ``todo`` here, the next batch decoded meanwhile; returns how many scores were
    new."""
    settings = worker.rescore
    context = ScoringContext(worker.indeterminate_std, socket.gethostname(),
                             RunFailures(run_id))
    loader = decoded_batches(todo, model, batch_size=settings.batch,
                             workers=min(settings.loader_workers, len(todo)),
                             pin_memory=model.device == "cuda")
    written = 0
    with Progress(len(todo), "rescore", settings.progress_log_s) as progress:
        for batches, batch in enumerate(loader, start=1):
            written += len(score_batch(sessions, model, batch, context).written)
            progress.advance(len(batch))
            hooks.after_rescore_batch(batches)
    return written


def finish(sessions: sessionmaker[Session], result: RescoreResult) -> None:
    """Record the run's outcome."""
    if result.run_id is None:
        return
    c = result.comparison
    with sessions.begin() as session:
        update_run(
            session, result.run_id, status=result.status.value, finished_at=utcnow(),
            selected=result.selected, already_scored=result.already_scored,
            scored=result.scored_now, failed=len(result.failed_now), flagged=c.flagged,
            indeterminate=c.indeterminate, decisions_changed=c.decisions_changed,
            studies_changed=len(c.changed), reports_written=len(result.reports.written),
            mean_probability=c.mean_probability, indeterminate_rate=c.indeterminate_rate,
            mean_shift=c.mean_shift, probabilities=list(c.probabilities),
            message=None if result.message is None else result.message[:1024])


def compare_scope(sessions: sessionmaker[Session], rows: Sequence[ScopeRow], model_version: str,
                  max_samples: int) -> tuple[Comparison, dict[int, str]]:
    """Compare the scope's scores with the previous model version's."""
    study_ids = sorted({r.study_id for r in rows})
    with sessions() as session:
        scores = study_scores(session, study_ids)
        uids = study_uids(session, study_ids)
    scope = {r.instance_id for r in rows}
    return compare(scores, scope, model_version, max_samples=max_samples), uids


def outcome_after_scoring(sessions: sessionmaker[Session], result: RescoreResult,
                          selection: Selection, todo: Sequence[ImageRef]) -> list[ScopeRow]:
    """Re-read the scope; count what this run scored and which of its instances failed."""
    with sessions() as session:
        rows = select_scope(session, selection, result.model_version)
        todo_ids = [ref.instance_id for ref in todo]
        result.failed_now = failures(session, todo_ids, result.model_version)
    done = {r.instance_id for r in rows if r.scored}
    result.scored_now = sum(1 for ref in todo if ref.instance_id in done)
    return rows


def load_model(model_dir: Path, worker: WorkerSettings) -> Ensemble:
    """Load (and hash-check) the ensemble with the worker's inference settings (device,
    threads, precision, backend, cache, exact margin), as live scoring does; an
    operator-facing error when it can't be."""
    try:
        return Ensemble.load(model_dir, worker.inference)
    except TriageError as exc:
        raise RescoreError(f"cannot load the ensemble in {model_dir}: {exc}") from exc


def new_run(sessions: sessionmaker[Session], request: RescoreRequest,
            model_version: str) -> int:
    """Insert the ``running`` row of this run."""
    with sessions.begin() as session:
        return start_run(session, NewRun(
            model_version=model_version, model_dir=str(request.model_dir),
            mode="distributed" if request.distributed else "local",
            host=socket.gethostname(), pid=os.getpid(), parameters=request.parameters()))


def report_step(sessions: sessionmaker[Session], request: RescoreRequest,
                manifest: EnsembleManifest, result: RescoreResult, worker: WorkerSettings,
                broker: Callable[[], Celery]) -> ReportSummary:
    """Write the SRs ``--send`` asks for, then deliver them (inline) or queue them."""
    study_ids = studies_to_report(sessions, request.send, result.comparison,
                                  manifest.model_version)
    if not study_ids:
        return ReportSummary()
    destinations = {d.label: d for d in parse_destinations(worker.destinations)}
    summary = write_reports(sessions, study_ids, identity=model_identity(manifest),
                            model_version=manifest.model_version,
                            destinations=list(destinations.values()),
                            options=report_options(worker, socket.gethostname()),
                            # loaded only if a study gets a result image (its heatmap)
                            ensemble=functools.cache(
                                lambda: load_model(request.model_dir, worker)))
    if request.distributed:
        queue_deliveries(sessions, summary, broker)
    else:
        options = delivery_options(worker)
        deliver_inline(sessions, summary, destinations=destinations,
                       send=channel_sender(sessions, options), broker=broker, options=options,
                       commit=commitment_hook(sessions, options))
    return summary


def _score(sessions: sessionmaker[Session], request: RescoreRequest, result: RescoreResult,
           todo: Sequence[ImageRef], worker: WorkerSettings,
           broker: Callable[[], Celery]) -> None:
    assert result.run_id is not None
    settings = worker.rescore
    if request.distributed:
        score_distributed(
            sessions, broker(), [ref.instance_id for ref in todo], request.model_dir,
            model_version=result.model_version, run_id=result.run_id, batch=settings.batch,
            indeterminate_std=worker.indeterminate_std, stall_s=settings.stall_s,
            log_every_s=settings.progress_log_s)
    else:
        score_local(sessions, load_model(request.model_dir, worker), todo,
                    run_id=result.run_id, worker=worker)


def run_rescore(sessions: sessionmaker[Session], request: RescoreRequest, *,
                worker: WorkerSettings, broker: Callable[[], Celery]) -> RescoreResult:
    """Run (or, with ``dry_run``, plan) one re-scoring; the run is recorded unless dry.

    Errors propagate after the run is recorded ``failed`` (``interrupted`` on Ctrl-C).
    """
    manifest = _manifest(request.model_dir)
    result = RescoreResult(manifest.model_version, send=request.send)
    if not request.dry_run:
        for run_id in mark_interrupted(sessions, socket.gethostname()):
            logger.info("run %d was interrupted; this run continues it", run_id)
    selection, rows, result.in_flight = plan(sessions, request, manifest.model_version,
                                             live_model_version(sessions, worker))
    result.selected = len(rows)
    result.already_scored = sum(r.scored for r in rows)
    result.failed_before = sum(r.failed and not r.scored for r in rows)
    todo = [ImageRef(r.instance_id, r.file_path, r.content_sha256)
            for r in rows if not r.scored and not r.failed]
    result.to_score = len(todo)
    if request.dry_run:
        model = load_model(request.model_dir, worker) if todo else None
        result.comparison, result.study_uids, result.would_report = dry_run_outcome(
            sessions, rows, todo, model, request.send, worker,
            manifest.model_version)
        result.scored_now = result.comparison.scored - result.already_scored
        result.status = RunStatus.SUCCEEDED
        return result
    result.run_id = new_run(sessions, request, manifest.model_version)
    try:
        if todo:
            _score(sessions, request, result, todo, worker, broker)
        rows = outcome_after_scoring(sessions, result, selection, todo)
        result.comparison, result.study_uids = compare_scope(
            sessions, rows, manifest.model_version, worker.rescore.drift_samples)
        result.reports = report_step(sessions, request, manifest, result, worker, broker)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        result.status = RunStatus.INTERRUPTED if interrupted else RunStatus.FAILED
        result.message = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        finish(sessions, result)
        raise
    failed = bool(result.failed_now) or result.reports.problems
    result.status = RunStatus.PARTIAL if failed else RunStatus.SUCCEEDED
    finish(sessions, result)
    return result
