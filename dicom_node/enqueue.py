"""Publishing received instances to the ``score`` queue, off the association threads.

The C-STORE handler only hands an instance id to :class:`Enqueuer`; a background thread publishes
it and marks the row ``queued``. When the broker is down the row stays ``received`` and the
sweeper publishes it again later, so a broker outage loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.queues import QUEUE_SCORE, TASK_SCORE_INSTANCE
from db.instances import mark_enqueued, stale_received
from db.models import Instance, InstanceStatus, utcnow

LOGGER = logging.getLogger(__name__)
_STOP = -1

Publisher = Callable[[int], None]


def celery_publisher(app: Celery) -> Publisher:
    """Publish ``score_instance(instance_id)`` without Celery's own retry loop (we sweep)."""

    def publish(instance_id: int) -> None:
        app.send_task(
            TASK_SCORE_INSTANCE, args=[instance_id], queue=QUEUE_SCORE, retry=False
        )

    return publish


class Enqueuer:
    """A single publishing thread plus a periodic sweeper of rows left ``received``."""

    def __init__(
        self,
        publish: Publisher,
        sessions: sessionmaker[Session],
        sweep_interval_s: float,
        sweep_after_s: float,
    ) -> None:
        self._publish = publish
        self._sessions = sessions
        self._sweep_interval_s = sweep_interval_s
        self._sweep_after_s = sweep_after_s
        self._pending: queue.Queue[int] = queue.Queue()
        self._pending_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._publish_loop, "enqueuer"), (self._sweep_loop, "sweeper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._pending.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

    def submit(self, instance_id: int) -> None:
        """Queue an id for publishing (once, however often submitted); never blocks."""
        with self._lock:
            if instance_id in self._pending_ids:
                return
            self._pending_ids.add(instance_id)
        self._pending.put(instance_id)

    def publish_now(self, instance_id: int) -> bool:
        """Publish one id and mark it queued; ``False`` (row left ``received``) on failure."""
        if not self._still_received(instance_id):
            return True  # another node, or an earlier attempt, already published it
        try:
            self._publish(instance_id)
        except Exception as exc:  # any broker failure: the sweeper will try again
            LOGGER.warning(
                "instance %d: broker unavailable, left as received for the sweeper (%s: %s)",
                instance_id, type(exc).__name__, exc,
            )
            return False
        try:
            with self._sessions.begin() as session:
                mark_enqueued(session, instance_id)
        except Exception as exc:  # published; a redelivery is harmless (scoring is idempotent)
            LOGGER.warning("instance %d: published but not marked queued (%s)", instance_id, exc)
        return True

    def _still_received(self, instance_id: int) -> bool:
        try:
            with self._sessions() as session:
                status = session.scalar(select(Instance.status).where(Instance.id == instance_id))
        except Exception as exc:
            LOGGER.warning("instance %d: database unavailable, publishing anyway (%s)",
                           instance_id, type(exc).__name__)
            return True
        return status == InstanceStatus.RECEIVED.value

    def sweep(self, after_s: float | None = None) -> int:
        """Queue every row left ``received`` for longer than ``after_s`` (default setting)."""
        age = self._sweep_after_s if after_s is None else after_s
        cutoff = utcnow() - dt.timedelta(seconds=age)
        try:
            with self._sessions() as session:
                ids = stale_received(session, cutoff)
        except Exception as exc:
            LOGGER.warning("sweeper: database unavailable (%s)", exc)
            return 0
        for instance_id in ids:
            self.submit(instance_id)
        if ids:
            LOGGER.info("sweeper: %d instances left received, queued for publishing", len(ids))
        return len(ids)

    def _publish_loop(self) -> None:
        while True:
            instance_id = self._pending.get()
            if instance_id == _STOP:
                return
            with self._lock:
                self._pending_ids.discard(instance_id)
            self.publish_now(instance_id)

    def _sweep_loop(self) -> None:
        self.sweep(after_s=0)  # rows a previous run left behind
        while not self._stopped.wait(self._sweep_interval_s):
            self.sweep()
