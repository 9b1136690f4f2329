"""The worker's Celery app: the broker factory plus the triage tasks, built on demand."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from common.queues import make_celery
from worker.runtime import WorkerContext
from worker.settings import WorkerSettings
from worker.tasks import register_tasks


def create_app(settings: WorkerSettings) -> tuple[Celery, WorkerContext]:
    """Build the app with the score, report and deliver tasks registered."""
    app = make_celery(settings.broker)
    context = WorkerContext(settings)
    register_tasks(app, context)
    worker_process_init.connect(context.after_fork, weak=False)
    return app, context
