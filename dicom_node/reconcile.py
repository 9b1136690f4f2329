"""The reconciler: the database is the queue, the broker only rings the bell.

Every step after the store records in the database when it is due before its message is sent
(``db.recovery``). Every ``interval_s`` the reconciler reads what is overdue and publishes it
again:

* instances left ``received`` for ``received_after_s`` (the broker was down): to the enqueuer;
* instances ``queued`` longer than the lease, or ``scoring`` under a claim older than the
  lease (the worker died): ``score_instance`` again, which takes the stale claim over;
* studies whose ``report_due_at`` passed ``received_after_s`` ago: ``report_study``;
* deliveries ``pending`` or ``retrying`` whose ``next_attempt_at`` passed ``received_after_s``
  ago: ``deliver_report``;
* Storage Commitments ``requested`` longer than ``commitment_timeout_s``: marked ``timed_out``
  and logged (nothing to publish; ``dicom_node.commitment``).

A message lost by the broker, or held by a worker that was killed, only delays its step. Tasks
are idempotent, so a step published twice happens once. So that a backlog is not published
over and over, a study or delivery is published again only when its due time changed or the
lease has passed since.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.queues import (
    QUEUE_DELIVER,
    QUEUE_SCORE,
    TASK_DELIVER_REPORT,
    TASK_REPORT_STUDY,
    TASK_SCORE_INSTANCE,
)
from db.instances import stale_received
from db.models import utcnow
from db.recovery import (
    DueDelivery,
    due_deliveries,
    due_studies,
    mark_republished,
    schedule_report_of_instance,
    stale_claims,
)
from dicom_node.commitment import expire_commitments
from dicom_node.settings import NodeSettings

LOGGER = logging.getLogger(__name__)



class Doorbell(Protocol):
    """Publishes the three triage tasks (``common.queues`` names); raises if the broker is down."""

    def score(self, instance_id: int) -> None: ...

    def report(self, study_id: int) -> None: ...

    def deliver(self, report_id: int, destination: str, item: str = "sr") -> None: ...


class CeleryDoorbell:
    """A :class:`Doorbell` on a Celery app, without Celery's own retry loop (we reconcile)."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def score(self, instance_id: int) -> None:
        self._app.send_task(TASK_SCORE_INSTANCE, args=[instance_id], queue=QUEUE_SCORE,
                            retry=False)

    def report(self, study_id: int) -> None:
        self._app.send_task(TASK_REPORT_STUDY, args=[study_id], queue=QUEUE_DELIVER,
                            retry=False)

    def deliver(self, report_id: int, destination: str, item: str = "sr") -> None:
        self._app.send_task(TASK_DELIVER_REPORT, args=[report_id, destination, item],
                            queue=QUEUE_DELIVER, retry=False)


@dataclass(frozen=True)
class ReconcileSettings:
    """How often the reconciler looks, and how late work must be before it steps in.

    Attributes
    ----------
    interval_s : ``TRIAGE_SWEEP_INTERVAL_S``: time between rounds.
    received_after_s : ``TRIAGE_SWEEP_AFTER_S``: age of a ``received`` row, and how long past
        its due time a report or delivery is left to its own message, before publishing again.
    lease_s : ``TRIAGE_SCORE_LEASE_S``: age of a ``queued`` row or a ``scoring`` claim before
        it is published again (the worker's take-over lease); also how long a published study
        or delivery is left alone if nothing changes.
    commitment_timeout_s : ``TRIAGE_COMMITMENT_TIMEOUT_S``: a Storage Commitment still
        ``requested`` this long after its request is marked ``timed_out``.
    """

    interval_s: float
    received_after_s: float
    lease_s: float
    commitment_timeout_s: float = 3600.0

    @classmethod
    def for_node(cls, node: NodeSettings) -> ReconcileSettings:
        """The node's sweep settings and lease."""
        return cls(interval_s=node.sweep_interval_s, received_after_s=node.sweep_after_s,
                   lease_s=node.score_lease_s, commitment_timeout_s=node.commitment_timeout_s)


@dataclass
class RoundCounts:
    """What one round found and published."""

    received: int = 0
    claims: int = 0
    reports: int = 0
    deliveries: int = 0
    commitments_timed_out: int = 0  # marked, not published (dicom_node.commitment)
    broker_down: bool = False

    @property
    def total(self) -> int:
        return self.received + self.claims + self.reports + self.deliveries


class _Throttle:
    """Remembers what was published for which due time, so each is published once a lease."""

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._sent: dict[Hashable, tuple[object, float]] = {}

    def due(self, key: Hashable, version: object, clock: float) -> bool:
        seen = self._sent.get(key)
        return seen is None or seen[0] != version or clock - seen[1] >= self._hold_s

    def sent(self, key: Hashable, version: object, clock: float) -> None:
        self._sent[key] = (version, clock)

    def keep_only(self, keys: set[Hashable]) -> None:
        for key in set(self._sent) - keys:
            del self._sent[key]


class Reconciler:
    """Publishes overdue work again, every ``interval_s``, in a background thread.

    ``submit`` hands ``received`` rows to the enqueuer, which publishes them and marks them
    ``queued``; everything else goes straight to the ``doorbell``.
    """

    def __init__(self, doorbell: Doorbell, sessions: sessionmaker[Session],
                 settings: ReconcileSettings, submit: Callable[[int], object]) -> None:
        self._doorbell = doorbell
        self._sessions = sessions
        self.settings = settings
        self._submit = submit
        self._studies = _Throttle(settings.lease_s)
        self._deliveries = _Throttle(settings.lease_s)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self, now: dt.datetime | None = None,
                 received_after_s: float | None = None) -> RoundCounts:
        """One round: read what is overdue, publish it. Never raises (logs instead)."""
        now = now or utcnow()
        settings = self.settings
        after = dt.timedelta(seconds=settings.received_after_s if received_after_s is None
                             else received_after_s)
        counts = RoundCounts()
        try:
            with self._sessions() as session:
                received = stale_received(session, now - after)
                claims = stale_claims(session, now - dt.timedelta(seconds=settings.lease_s))
                studies = due_studies(session, now - after)
                deliveries = due_deliveries(session, now - after)
        except Exception as exc:  # the database is down: try again next round
            LOGGER.warning("reconciler: database unavailable (%s)", type(exc).__name__)
            return counts
        counts.commitments_timed_out = self._expire_commitments(now)
        for instance_id in received:
            self._submit(instance_id)
        counts.received = len(received)
        try:
            counts.claims = self._republish_claims(claims, now)
            counts.reports = self._publish_studies(studies)
            counts.deliveries = self._publish_deliveries(deliveries)
        except _BrokerDownError as exc:
            counts.broker_down = True
            LOGGER.warning("reconciler: broker unavailable, will try again (%s)", exc)
        if counts.total:
            LOGGER.info("reconciler: published again %d received, %d stale claims, %d reports, "
                        "%d deliveries", counts.received, counts.claims, counts.reports,
                        counts.deliveries)
        return counts

    def _expire_commitments(self, now: dt.datetime) -> int:
        try:
            return len(expire_commitments(self._sessions, self.settings.commitment_timeout_s, now))
        except Exception as exc:  # the database: next round
            LOGGER.warning("reconciler: commitment timeouts not recorded (%s)", type(exc).__name__)
            return 0

    @staticmethod
    def _ring(publish: Callable[..., None], *args: object) -> None:
        try:
            publish(*args)
        except Exception as exc:  # any broker failure: stop this round
            raise _BrokerDownError(f"{type(exc).__name__}: {exc}") from exc

    def _republish_claims(self, instance_ids: list[int], now: dt.datetime) -> int:
        published: list[int] = []
        try:
            for instance_id in instance_ids:
                self._ring(self._doorbell.score, instance_id)
                published.append(instance_id)
        finally:
            if published:
                self._record_claims(published, now)
        return len(published)

    def _record_claims(self, instance_ids: list[int], now: dt.datetime) -> None:
        """Mark them published, and make their studies' reports due within the lease."""
        due = now + dt.timedelta(seconds=self.settings.lease_s)
        try:
            with self._sessions.begin() as session:
                mark_republished(session, instance_ids, now)
                for instance_id in instance_ids:
                    schedule_report_of_instance(session, instance_id, due)
        except Exception as exc:  # published; publishing once more next round is harmless
            LOGGER.warning("reconciler: %d instances published but not marked (%s)",
                           len(instance_ids), type(exc).__name__)

    def _publish_studies(self, studies: list[tuple[int, dt.datetime]]) -> int:
        clock = time.monotonic()
        self._studies.keep_only({study_id for study_id, _ in studies})
        count = 0
        for study_id, due in studies:
            if self._studies.due(study_id, due, clock):
                self._ring(self._doorbell.report, study_id)
                self._studies.sent(study_id, due, clock)
                count += 1
        return count

    def _publish_deliveries(self, deliveries: list[DueDelivery]) -> int:
        clock = time.monotonic()
        self._deliveries.keep_only({(d.report_id, d.destination, d.item) for d in deliveries})
        count = 0
        for due in deliveries:
            key = (due.report_id, due.destination, due.item)
            if self._deliveries.due(key, due.version, clock):
                self._ring(self._doorbell.deliver, due.report_id, due.destination,
                           due.item.value)
                self._deliveries.sent(key, due.version, clock)
                count += 1
        return count

    def _loop(self) -> None:
        self.run_once(received_after_s=0)  # rows a previous run left received
        while not self._stopped.wait(self.settings.interval_s):
            self.run_once()


class _BrokerDownError(Exception):
    """Publishing failed; the rest of the round waits for the next one."""
