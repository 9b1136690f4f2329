"""Publishing received instances to the ``score`` queue, off the association threads.

The C-STORE handler only hands an instance id to :class:`Enqueuer`; a background thread publishes
it at once, then marks the row ``queued`` and makes its study's report due within
``report_due_s`` (the lease), so the study is reported even if every later message is lost. The
marks of the ids published within ``MARK_AFTER_S`` share one transaction: during a burst the
extra commit does not compete with every C-STORE's own commit for the database. When the
broker is down the row stays ``received`` and the reconciler (``dicom_node.reconcile``) hands it
back later, so a broker outage loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.instances import mark_enqueued
from db.models import Instance, InstanceStatus, utcnow
from db.recovery import schedule_report_of_instance

LOGGER = logging.getLogger(__name__)
_STOP = -1
MAX_BATCH = 64  # ids taken from the queue at once
MARK_AFTER_S = 0.25  # published ids are marked queued together, this long after the first

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
        return instance_id in self.publish_many([instance_id])

    def publish_many(self, instance_ids: list[int]) -> set[int]:
        """Publish each id still ``received``, then mark them queued in one transaction.

        Returns the ids that need nothing more: published, or already moved on.
        """
        done, published = self._publish_each(instance_ids)
        self._mark_queued(published)
        return done | set(published)

    def _publish_each(self, instance_ids: list[int]) -> tuple[set[int], list[int]]:
        """(ids no longer ``received``, ids published now); a broker failure leaves an id
        ``received`` for the reconciler."""
        waiting = self._still_received(instance_ids)
        published: list[int] = []
        for instance_id in instance_ids:
            if instance_id not in waiting:
                continue  # another node, or an earlier attempt, already published it
            try:
                self._publish(instance_id)
            except Exception as exc:  # any broker failure: the reconciler will try again
                LOGGER.warning(
                    "instance %d: broker unavailable, left as received for the reconciler "
                    "(%s: %s)", instance_id, type(exc).__name__, exc,
                )
                continue
            published.append(instance_id)
        return set(instance_ids) - waiting, published

    def _mark_queued(self, instance_ids: list[int]) -> None:
        if not instance_ids:
            return
        due = utcnow() + dt.timedelta(seconds=self._report_due_s)
        try:
            with self._sessions.begin() as session:
                for instance_id in instance_ids:
                    mark_enqueued(session, instance_id)
                    schedule_report_of_instance(session, instance_id, due)
        except Exception as exc:  # published; a redelivery is harmless (scoring is idempotent)
            LOGGER.warning("instances %s: published but not marked queued (%s)",
                           ",".join(map(str, instance_ids)), exc)

    def _still_received(self, instance_ids: list[int]) -> set[int]:
        try:
            with self._sessions() as session:
                return set(session.scalars(select(Instance.id).where(
                    Instance.id.in_(instance_ids),
                    Instance.status == InstanceStatus.RECEIVED.value)))
        except Exception as exc:
            LOGGER.warning("instances %s: database unavailable, publishing anyway (%s)",
                           ",".join(map(str, instance_ids)), type(exc).__name__)
            return set(instance_ids)

    def _next_batch(self, timeout: float | None) -> tuple[list[int], bool]:
        """The ids waiting now (none if ``timeout`` passes first), and whether to stop."""
        try:
            ids = [self._pending.get(timeout=timeout)]
        except queue.Empty:
            return [], False
        while len(ids) < MAX_BATCH:
            try:
                ids.append(self._pending.get_nowait())
            except queue.Empty:
                break
        stop = _STOP in ids
        return [instance_id for instance_id in ids if instance_id != _STOP], stop

    def _forget(self, instance_ids: list[int] | set[int]) -> None:
        """Let these ids be submitted again (handled, or left ``received`` on failure)."""
        with self._lock:
            self._pending_ids.difference_update(instance_ids)

    def _publish_loop(self) -> None:
        """Publish each id as it comes; mark the published ones queued together, at most
        ``MARK_AFTER_S`` later, so a stream of C-STOREs costs one extra commit per window
        instead of one per instance. A published id stays in ``_pending_ids`` until it is
        marked, so the reconciler, which still sees it ``received``, can't have it published
        twice."""
        unmarked: list[int] = []
        since = 0.0
        while True:
            timeout = (None if not unmarked
                       else max(0.0, since + MARK_AFTER_S - time.monotonic()))
            ids, stop = self._next_batch(timeout)
            if ids:
                _, published = self._publish_each(ids)
                self._forget(set(ids) - set(published))
                if published and not unmarked:
                    since = time.monotonic()
                unmarked += published
            if unmarked and (stop or time.monotonic() - since >= MARK_AFTER_S):
                self._mark_queued(unmarked)
                self._forget(unmarked)
                unmarked = []
            if stop:
                return
