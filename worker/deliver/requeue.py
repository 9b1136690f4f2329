"""Redelivery: put deliveries back to ``pending`` and ring the bell on the deliver queue.

Shared by ``cxr-triage redeliver`` and the web app's redeliver buttons.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from common.queues import QUEUE_DELIVER, TASK_DELIVER_REPORT, BrokerSettings, make_celery
from db.models import DeliveryItem
from db.reports import requeue_deliveries


def redeliver(sessions: sessionmaker[Session], broker: BrokerSettings, *,
              report_id: int | None = None,
              all_failed: bool = False,
              destination: str | None = None) -> list[tuple[int, str, DeliveryItem]]:
    """Requeue one report's unsent deliveries, or every failed one (to ``destination`` only,
    when given); publish each.

    The database holds the work: if the publish is lost, the reconciler publishes the
    ``pending`` deliveries again once due. Returns the (report id, destination, item) triples.
    """
    with sessions.begin() as session:
        rows = requeue_deliveries(session, report_id=report_id, all_failed=all_failed,
                                  destination=destination)
    if rows:
        app = make_celery(broker)
        for report, label, item in rows:
            app.send_task(TASK_DELIVER_REPORT, args=[report, label, item.value],
                          queue=QUEUE_DELIVER)
    return rows
