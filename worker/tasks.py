"""The Celery tasks: thin adapters from ids to the plain functions that hold the logic.

Tasks take ids, are idempotent, and record their outcome in the database (there is no result
backend). Before a step sends the message of the next one, it records when that step is due
(``db.recovery``), so the node's reconciler publishes it again if the message is lost; the
countdown messages are only the fast path. A task that fails on a database outage is retried
with backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from celery import Celery, Task
from sqlalchemy.orm import Session, sessionmaker

from common.metrics import deliveries_total, reports_total
from common.queues import (
    QUEUE_DELIVER,
    TASK_DELIVER_REPORT,
    TASK_REPORT_STUDY,
    TASK_SCORE_INSTANCE,
)
from db.models import DeliveryItem, utcnow
from db.recovery import schedule_reports
from worker.deliver.channels import channel_sender, commitment_hook
from worker.deliver.delivery import DeliveryKey, deliver_report
from worker.report.study import report_failed, report_step
from worker.retry_policy import DB_RETRY
from worker.runtime import WorkerContext
from worker.score.ensemble import Ensemble
from worker.score.live import ScoreRun, score_instances

logger = logging.getLogger(__name__)



class TriageTask(Task):
    """Base of the triage tasks: the worker context, and the ensemble loaded lazily.

    The ensemble is loaded by the first task that needs it, not in ``worker_process_init``
    (whose handlers are killed after 4 s).
    """

    context: WorkerContext

    @property
    def ensemble(self) -> Ensemble:
        return self.context.ensemble()


def register_tasks(app: Celery, context: WorkerContext) -> None:
    """Define the three tasks on ``app``, bound to ``context``."""
    from worker.rescore.task import register_rescore_task  # cxr_triage.rescore_batch

    register_rescore_task(app, context)

    @app.task(name=TASK_SCORE_INSTANCE, bind=True, base=TriageTask, context=context,
              **DB_RETRY)
    def score_instance(self: TriageTask, instance_id: int) -> None:
        token = str(self.request.id or f"local-{instance_id}")
        context.refresh()  # between tasks: follow a newly promoted model

        def report_later(run: ScoreRun) -> None:  # after each recorded batch
            _report_due(context.sessions, run.studies, context.settings.study_quiet_s)
            for study_id in run.studies:
                app.send_task(TASK_REPORT_STUDY, args=[study_id], queue=QUEUE_DELIVER,
                              countdown=context.settings.study_quiet_s)

        run = score_instances(context.sessions, int(instance_id), token,
                              lambda: self.ensemble, context.scoring_options(),
                              on_recorded=report_later)
        if run.noop:  # a redelivered task re-triggers its scored study's report
            report_later(run)

    @app.task(name=TASK_REPORT_STUDY, bind=True, base=TriageTask, context=context, **DB_RETRY)
    def report_study_task(self: TriageTask, study_id: int) -> None:
        options = context.report_options()
        try:
            identity, model_version = context.model()
        except Exception as exc:  # no readable manifest: recorded like any failed attempt
            outcome = report_failed(context.sessions, int(study_id), exc, options)
        else:
            outcome = report_step(context.sessions, int(study_id), identity=identity,
                                  model_version=model_version,
                                  destinations=list(context.destinations.values()),
                                  options=options, only_when_due=True,
                                  ensemble=context.ensemble)
        reports_total().labels(outcome.action.value).inc()
        if outcome.retry_in_s is not None:  # WAIT or RETRY; the study records when, too
            app.send_task(TASK_REPORT_STUDY, args=[study_id], queue=QUEUE_DELIVER,
                          countdown=outcome.retry_in_s)
        for label, item in outcome.deliveries:
            app.send_task(TASK_DELIVER_REPORT, args=[outcome.report_id, label, item.value],
                          queue=QUEUE_DELIVER)

    @app.task(name=TASK_DELIVER_REPORT, bind=True, base=TriageTask, context=context,
              **DB_RETRY)
    def deliver_report_task(self: TriageTask, report_id: int, destination: str,
                            item: str = DeliveryItem.SR.value) -> None:
        options = context.delivery_options()
        result = deliver_report(context.sessions, int(report_id), destination,
                                destinations=context.destinations,
                                send=channel_sender(context.sessions, options),
                                options=options, only_when_due=True, item=DeliveryItem(item),
                                commit=commitment_hook(context.sessions, options))
        deliveries_total().labels(result.state.value if result.state else "unknown").inc()
        _publish_released(app, result.released)
        if result.retry_in_s is not None:
            # A new message with a countdown; this one is acknowledged. Attempts are counted
            # in the database, so Celery's own retry limit is not used.
            raise self.retry(countdown=result.retry_in_s, max_retries=None)


def _publish_released(app: Celery, released: Sequence[DeliveryKey]) -> None:
    """The destination answers again: its waiting deliveries go now (they are due in the
    database too, so the reconciler publishes any message lost here)."""
    for key in released:
        app.send_task(TASK_DELIVER_REPORT, args=[key.report_id, key.destination, key.item.value],
                      queue=QUEUE_DELIVER)


def _report_due(sessions: sessionmaker[Session], study_ids: Sequence[int], quiet_s: float) -> None:
    """Record that these studies are to be reported once quiet, before the message is sent."""
    if study_ids:
        with sessions.begin() as session:
            schedule_reports(session, study_ids, utcnow() + dt.timedelta(seconds=quiet_s))
