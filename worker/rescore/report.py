"""Reports of a re-scoring run: new SRs for the studies whose decision changed, and delivery.

Each new SR is written by ``worker.report.study.report_study`` under the new model version and
names its predecessor, the latest earlier report of the study under any model version, in
the Predecessor Documents Sequence. Deliveries are recorded ``pending``; then either sent
here, one attempt each (local runs), or put on the ``deliver`` queue for the workers
(``--distributed``). A local attempt that must be retried is handed to the ``deliver`` queue.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.queues import QUEUE_DELIVER, TASK_DELIVER_REPORT
from db.models import DeliveryItem
from db.reports import report_deliveries
from db.runs import latest_report_any_version, studies_reported_under
from worker.deliver.delivery import CommitHook, DeliveryOptions, Sender, deliver_report
from worker.deliver.destinations import AnyDestination
from worker.report.content import SRError
from worker.report.identity import ModelIdentity
from worker.report.study import EnsembleSource, ReportAction, ReportOptions, report_study
from worker.rescore.compare import Comparison
from worker.rescore.modes import SendMode

logger = logging.getLogger(__name__)


@dataclass
class ReportSummary:
    """What the reporting step did."""

    written: list[tuple[int, int]] = field(default_factory=list)  # (study id, report id)
    unchanged: int = 0
    waiting: list[int] = field(default_factory=list)  # not quiet yet: a later run reports them
    failed: dict[int, str] = field(default_factory=dict)  # study id -> why no SR
    deliveries: Counter[str] = field(default_factory=Counter)  # state -> count

    @property
    def problems(self) -> bool:
        return bool(self.failed) or self.deliveries.get("failed", 0) > 0


def studies_to_report(sessions: sessionmaker[Session], send: SendMode, comparison: Comparison,
                      model_version: str) -> list[int]:
    """The studies to (re)consider: see :class:`SendMode`.

    With ``changed``, a study that already has a report under the new version is included
    too: ``report_study`` writes a revision only if its decision moved again.
    """
    if send is SendMode.NONE:
        return []
    decided = sorted(comparison.study_decisions)
    if send is SendMode.ALL:
        return decided
    with sessions() as session:
        reported = studies_reported_under(session, decided, model_version)
    return sorted({c.study_id for c in comparison.changed} | reported)


def write_reports(sessions: sessionmaker[Session], study_ids: Sequence[int], *,
                  identity: ModelIdentity, model_version: str,
                  destinations: Sequence[AnyDestination], options: ReportOptions,
                  ensemble: EnsembleSource | None = None) -> ReportSummary:
    """Run ``report_study`` for each study, superseding its latest report of any version;
    ``ensemble`` gives the result images their heatmaps, as in live reporting."""
    summary = ReportSummary()
    for study_id in study_ids:
        with sessions() as session:
            supersedes = latest_report_any_version(session, study_id)
        try:
            outcome = report_study(sessions, study_id, identity=identity,
                                   model_version=model_version, destinations=destinations,
                                   options=options, supersedes=supersedes,
                                   ensemble=ensemble)
        except (SRError, OSError) as exc:
            summary.failed[study_id] = str(exc)
            logger.error("study %d: no report: %s", study_id, exc)
            continue
        if outcome.action is ReportAction.WRITTEN and outcome.report_id is not None:
            summary.written.append((study_id, outcome.report_id))
        elif outcome.action is ReportAction.WAIT:
            summary.waiting.append(study_id)
        else:
            summary.unchanged += 1
    return summary


def _recorded(sessions: sessionmaker[Session], report_id: int) -> list[tuple[str, DeliveryItem]]:
    with sessions() as session:
        return report_deliveries(session, report_id)


def deliver_inline(sessions: sessionmaker[Session], summary: ReportSummary, *,
                   destinations: Mapping[str, AnyDestination], send: Sender,
                   options: DeliveryOptions, broker: Callable[[], Celery],
                   commit: CommitHook | None = None) -> None:
    """One attempt per new report's recorded delivery; retries go to the ``deliver`` queue,
    and so do deliveries a sent one released (their destination answers again)."""
    for _, report_id in summary.written:
        for label, item in _recorded(sessions, report_id):
            result = deliver_report(sessions, report_id, label, destinations=destinations,
                                    send=send, options=options, item=item, commit=commit)
            state = result.state.value if result.state else "unknown"
            summary.deliveries[state] += 1
            if result.retry_in_s is not None:
                _publish(broker, report_id, label, item, result.retry_in_s)
            for key in result.released:
                _publish(broker, key.report_id, key.destination, key.item, None)


def queue_deliveries(sessions: sessionmaker[Session], summary: ReportSummary,
                     broker: Callable[[], Celery]) -> None:
    """Put every new report's recorded deliveries on the ``deliver`` queue."""
    for _, report_id in summary.written:
        for label, item in _recorded(sessions, report_id):
            if _publish(broker, report_id, label, item, None):
                summary.deliveries["queued"] += 1


def _publish(broker: Callable[[], Celery], report_id: int, label: str, item: DeliveryItem,
             countdown: float | None) -> bool:
    try:
        broker().send_task(TASK_DELIVER_REPORT, args=[report_id, label, item.value],
                           queue=QUEUE_DELIVER, countdown=countdown)
    except Exception as exc:  # broker down: the row stays pending/retrying, nothing is lost
        logger.warning("report %d -> %s: cannot queue the delivery (%s); run "
                       "`cxr-triage redeliver --report %d` once the broker is back",
                       report_id, label, exc, report_id)
        return False
    return True
