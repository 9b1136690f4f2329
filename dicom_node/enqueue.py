"""Publishing received instances to the ``score`` queue, off the association threads.

The C-STORE handler only hands an instance id to :class:`Enqueuer`; a background thread publishes
it and marks the row ``queued``, and makes its study's report due within ``report_due_s`` (the
lease), so the study is reported even if every later message is lost. When the broker is down
the row stays ``received`` and the reconciler (``dicom_node.reconcile``) hands it back later, so
a broker outage loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.instances import mark_enqueued
from db.models import Instance, InstanceStatus, utcnow
from db.recovery import schedule_report_of_instance

LOGGER = logging.getLogger(__name__)
_STOP = -1

Publisher = Callable[[int], None]  # publishes score_instance(instance_id)


class Enqueuer:
    """A single publishing thread for instances left ``received``."""

    def __init__(self, publish: Publisher, sessions: sessionmaker[Session],
                 report_due_s: float) -> None:
        self._publish = publish
        self._sessions = sessions
        self._report_due_s = report_due_s
        self._pending: queue.Queue[int] = queue.Queue()
        self._pending_ids: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._publish_loop, name="enqueuer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._pending.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

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
        except Exception as exc:  # any broker failure: the reconciler will try again
            LOGGER.warning(
                "instance %d: broker unavailable, left as received for the reconciler (%s: %s)",
                instance_id, type(exc).__name__, exc,
            )
            return False
        now = utcnow()
        try:
            with self._sessions.begin() as session:
                mark_enqueued(session, instance_id)
                schedule_report_of_instance(
                    session, instance_id, now + dt.timedelta(seconds=self._report_due_s))
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

    def _publish_loop(self) -> None:
        while True:
            instance_id = self._pending.get()
            if instance_id == _STOP:
                return
            with self._lock:
                self._pending_ids.discard(instance_id)
            self.publish_now(instance_id)
