"""Delivering a report to one destination, with the states recorded in the database.

Rules (docs/worker.md):

* ``sent``/``shadow``/``withheld``/``failed`` are final for a task: a redelivered task does
  nothing (``cxr-triage redeliver`` puts rows back to ``pending``).
* A transient problem (``retry``) is recorded as ``retrying`` with the attempt count, the
  error and ``next_attempt_at``, until ``delivery_max_attempts`` attempts have been made; then
  ``failed``. Whatever the sender raises is recorded too: an ``OSError`` as ``retry``, anything
  else as ``failed`` with its reason.
* An attempt in progress holds the row for ``lease_s`` (``next_attempt_at``): a duplicate task
  arriving meanwhile, or before a retry's time, does nothing; if the worker dies mid-send, the
  node's reconciler publishes the delivery again once that time has passed.
* Priority is never lowered once HIGH went out: a ROUTINE revision is ``withheld`` from a
  destination that was sent (or is being sent) a HIGH revision of the same study under the
  same model version. A new model version starts afresh.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.models import DeliveryItem, DeliveryState, Report, utcnow
from db.reports import get_delivery, high_priority_on_its_way, set_delivery_state
from worker.deliver.cstore import DeliveryError, DeliveryOutcome, OutcomeKind, send_file
from worker.deliver.destinations import Destination
from worker.retry_policy import backoff_s, describe, is_transient
from worker.score.decision import Priority

logger = logging.getLogger(__name__)

Sender = Callable[[Path, Destination], DeliveryOutcome]
_FINAL = frozenset({DeliveryState.SENT, DeliveryState.SHADOW, DeliveryState.WITHHELD,
                    DeliveryState.FAILED})
_EARLY_S = 1.0  # a task this much before its time still runs (timers fire a little early)

__all__ = ["DeliveryOptions", "DeliveryResult", "Sender", "backoff_s", "deliver_report",
           "item_path", "scu_sender"]


@dataclass(frozen=True)
class DeliveryOptions:
    """The settings delivery uses (built from ``WorkerSettings`` by ``worker.runtime``)."""

    calling_ae: str
    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    lease_s: float  # how long an attempt in progress holds the delivery


@dataclass(frozen=True)
class DeliveryResult:
    """The recorded state, and when to try again (``retry_in_s``) for ``retrying``."""

    state: DeliveryState | None
    reason: str = ""
    attempts: int = 0
    retry_in_s: float | None = None


def scu_sender(calling_ae: str) -> Sender:
    """A sender that C-STOREs with ``worker.deliver.cstore.send_file``."""
    def send(path: Path, destination: Destination) -> DeliveryOutcome:
        return send_file(path, destination, calling_ae=calling_ae)
    return send


def _start(sessions: sessionmaker[Session], report_id: int, label: str, item: DeliveryItem,
           destinations: Mapping[str, Destination], options: DeliveryOptions,
           only_when_due: bool) -> tuple[DeliveryResult | None, Report | None, int]:
    """Check the row and the rules; count the attempt. A result means: nothing to send."""
    now = utcnow()
    with sessions.begin() as session:
        delivery = get_delivery(session, report_id, label, item)
        report = session.get(Report, report_id)
        if delivery is None or report is None:
            logger.warning("report %d: no delivery to %s recorded; nothing to do", report_id, label)
            return DeliveryResult(None, "unknown delivery"), None, 0
        state = DeliveryState(delivery.state)
        if state in _FINAL:
            return DeliveryResult(state, "already final", delivery.attempts), None, 0
        due = delivery.next_attempt_at
        if only_when_due and due is not None and due > now + dt.timedelta(seconds=_EARLY_S):
            return DeliveryResult(state, "not due yet", delivery.attempts), None, 0
        destination = destinations.get(label)
        if destination is None:
            reason = f"{label} is not in TRIAGE_DESTINATIONS any more; add it and redeliver"
            set_delivery_state(session, delivery, DeliveryState.FAILED, reason)
            return DeliveryResult(DeliveryState.FAILED, reason, delivery.attempts), None, 0
        if report.priority == Priority.ROUTINE.value:
            earlier = high_priority_on_its_way(session, report, label)
            if earlier is not None:
                reason = (f"not sent: report {earlier} with HIGH priority went to {label} for this "
                          "study and model version; priority is never lowered")
                set_delivery_state(session, delivery, DeliveryState.WITHHELD, reason)
                return DeliveryResult(DeliveryState.WITHHELD, reason, delivery.attempts), None, 0
        delivery.attempts += 1  # counted before trying, so a crash mid-send still counts
        delivery.next_attempt_at = now + dt.timedelta(seconds=options.lease_s)
        return None, report, delivery.attempts


def _finish(sessions: sessionmaker[Session], report_id: int, label: str, item: DeliveryItem,
            attempts: int, outcome: DeliveryOutcome, options: DeliveryOptions) -> DeliveryResult:
    kind = outcome.kind
    reason = outcome.reason
    retry_in: float | None = None
    if kind is OutcomeKind.SENT:
        state = DeliveryState.SENT
    elif kind is OutcomeKind.SHADOW:
        state = DeliveryState.SHADOW
    elif kind is OutcomeKind.RETRY and attempts < options.max_attempts:
        state = DeliveryState.RETRYING
        retry_in = backoff_s(attempts, base_s=options.backoff_s, max_s=options.backoff_max_s)
    else:
        state = DeliveryState.FAILED
        if kind is OutcomeKind.RETRY:
            reason = f"gave up after {attempts} attempts: {reason}"
    with sessions.begin() as session:
        delivery = get_delivery(session, report_id, label, item)
        if delivery is not None:
            error = None if state in (DeliveryState.SENT, DeliveryState.SHADOW) else reason
            due = None if retry_in is None else utcnow() + dt.timedelta(seconds=retry_in)
            set_delivery_state(session, delivery, state, error, next_attempt_at=due)
    return DeliveryResult(state, reason, attempts, retry_in)


def item_path(report: Report, item: DeliveryItem) -> Path:
    """The file a delivery item sends: the SR, or the result image."""
    if item is DeliveryItem.IMAGE:
        if not report.image_file_path:
            raise DeliveryError(f"report {report.id} has no result image")
        return Path(report.image_file_path)
    if item is DeliveryItem.SR:
        return Path(report.file_path)
    raise DeliveryError(f"report {report.id}: {item.value} is not sent as a DICOM file")


def _send(send: Sender, report: Report, item: DeliveryItem, destination: Destination,
          label: str, attempt: int) -> DeliveryOutcome:
    """One try of the sender; whatever it raises becomes an outcome with the reason."""
    try:
        return send(item_path(report, item), destination)
    except DeliveryError as exc:  # the SR file or the TLS material is unusable
        return DeliveryOutcome(OutcomeKind.FAILED, str(exc), destination=label)
    except Exception as exc:  # recorded, never lost: retried when it may pass
        kind = OutcomeKind.RETRY if is_transient(exc) else OutcomeKind.FAILED
        logger.warning("report %d -> %s: attempt %d raised %s", report.id, label, attempt,
                       type(exc).__name__)
        return DeliveryOutcome(kind, describe(exc), destination=label)


def deliver_report(sessions: sessionmaker[Session], report_id: int, label: str, *,
                   destinations: Mapping[str, Destination], send: Sender,
                   options: DeliveryOptions, only_when_due: bool = False,
                   item: DeliveryItem = DeliveryItem.SR) -> DeliveryResult:
    """Try one delivery of ``item`` of report ``report_id`` to ``label`` and record it.

    ``only_when_due`` (the task): do nothing while the delivery's ``next_attempt_at`` is in the
    future, that is during a retry's backoff or while another attempt holds it.
    """
    done, report, attempts = _start(sessions, report_id, label, item, destinations, options,
                                    only_when_due)
    if done is not None:
        return done
    assert report is not None
    outcome = _send(send, report, item, destinations[label], label, attempts)
    result = _finish(sessions, report_id, label, item, attempts, outcome, options)
    log = logger.warning if result.state in (DeliveryState.FAILED,
                                             DeliveryState.RETRYING) else logger.info
    log("report %d %s -> %s: %s after attempt %d (%s)%s", report_id, item.value, label,
        result.state.value if result.state else "?", attempts, result.reason,
        "" if result.retry_in_s is None else f"; retry in {result.retry_in_s:.0f} s")
    return result
