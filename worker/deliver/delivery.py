"""Delivering one item of a report to one destination, with the states recorded in the database.

Rules (docs/worker.md, docs/operations.md):

* ``sent``/``shadow``/``withheld``/``failed`` are final for a task: a redelivered task does
  nothing (``cxr-triage redeliver`` puts rows back to ``pending``).
* A transient problem (``retry``) is recorded as ``retrying`` with the attempt count, the
  error and ``next_attempt_at`` (capped exponential backoff with jitter), until the retry
  horizon has passed since the delivery first failed (``failing_since``); then ``failed``.
  Whatever the sender raises is recorded too: an ``OSError`` as ``retry``, anything else as
  ``failed`` with its reason.
* A destination that is failing is tried by one delivery at a time: while another delivery to
  it waits for its next attempt (or holds an attempt in progress), a delivery is not sent but
  waits (``retrying``) until then. When a delivery to the destination is sent, the waiting ones
  are due at once (``DeliveryResult.released``, published by the task). A dead destination so
  costs one attempt per backoff, not one per delivery, and the workers stay free for the
  destinations that answer.
* An attempt in progress holds the row for ``lease_s`` (``next_attempt_at``): a duplicate task
  arriving meanwhile, or before a retry's time, does nothing; if the worker dies mid-send, the
  node's reconciler publishes the delivery again once that time has passed.
* Priority is never lowered once HIGH went out: a ROUTINE revision is ``withheld`` from a
  destination that was sent (or is being sent) a HIGH revision of the same study under the
  same model version. A new model version starts afresh.
* How an item is sent depends on the destination's kind (``worker.deliver.channels``); after a
  DICOM item is sent to a destination with ``commit``, the ``commit`` hook asks for Storage
  Commitment. Its failure never changes the delivery's state.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from common.commitment import REPORT_WAIT_S
from db.commitments import DeliveryKey
from db.models import Delivery, DeliveryItem, DeliveryState, Report, utcnow
from db.reports import (
    destination_hold,
    get_delivery,
    high_priority_on_its_way,
    release_destination,
    set_delivery_state,
)
from worker.deliver.cstore import DeliveryError, DeliveryOutcome, OutcomeKind
from worker.deliver.destinations import AnyDestination, Destination
from worker.retry_policy import DELIVERY_JITTER, backoff_s, describe, is_transient, retry_in_s
from worker.score.decision import Priority

logger = logging.getLogger(__name__)

_FINAL = frozenset({DeliveryState.SENT, DeliveryState.SHADOW, DeliveryState.WITHHELD,
                    DeliveryState.FAILED})
_EARLY_S = 1.0  # a task this much before its time still runs (timers fire a little early)

__all__ = ["CommitHook", "DeliveryKey", "DeliveryOptions", "DeliveryResult", "Outgoing",
           "Sender", "backoff_s", "deliver_report", "item_path"]


@dataclass(frozen=True)
class DeliveryOptions:
    """The settings delivery uses (built from ``WorkerSettings`` by ``worker.runtime``)."""

    calling_ae: str
    retry_horizon_s: float  # retried until this long after the first failure, then failed
    backoff_s: float
    backoff_max_s: float
    lease_s: float  # how long an attempt in progress holds the delivery
    connect_timeout_s: float = 10.0
    timeout_s: float = 60.0
    jitter: float = DELIVERY_JITTER
    commitment_wait_s: float = REPORT_WAIT_S  # N-EVENT-REPORT on the request's association


@dataclass(frozen=True)
class DeliveryResult:
    """The recorded state, and when to try again (``retry_in_s``) for ``retrying``.

    ``released``: other deliveries to the same destination made due now because this one was
    sent; the caller publishes them.
    """

    state: DeliveryState | None
    reason: str = ""
    attempts: int = 0
    retry_in_s: float | None = None
    released: tuple[DeliveryKey, ...] = ()


@dataclass(frozen=True)
class Outgoing:
    """What one attempt sends: a report's item (its row, read before the attempt) and where."""

    report: Report
    item: DeliveryItem
    destination: AnyDestination

    @property
    def path(self) -> Path:
        """The DICOM file of the item (``DeliveryError`` when it has none)."""
        return item_path(self.report, self.item)


# Sends one item its destination's way (``worker.deliver.channels.channel_sender``).
Sender = Callable[[Outgoing], DeliveryOutcome]
# Called once a DICOM item was sent to a destination with ``commit`` (Storage Commitment).
CommitHook = Callable[[DeliveryKey, Outgoing], None]


def item_path(report: Report, item: DeliveryItem) -> Path:
    """The file a delivery item sends: the SR, or the result image."""
    if item is DeliveryItem.IMAGE:
        if not report.image_file_path:
            raise DeliveryError(f"report {report.id} has no result image")
        return Path(report.image_file_path)
    if item is DeliveryItem.SR:
        return Path(report.file_path)
    raise DeliveryError(f"report {report.id}: {item.value} is not sent as a DICOM file")


def _failing_for_s(delivery: Delivery, now: dt.datetime) -> float:
    since = delivery.failing_since
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


def _wait_for_destination(session: Session, delivery: Delivery, label: str,
                          options: DeliveryOptions, now: dt.datetime) -> DeliveryResult | None:
    """While another delivery to ``label`` is failing and waits for its next attempt, this
    one waits until then (or is ``failed`` once past its own horizon). ``None``: go ahead."""
    own = delivery.next_attempt_at
    hold = destination_hold(session, label, other_than=delivery.id,
                            after=now if own is None or own < now else own)
    if hold is None:
        return None
    until, report_id = hold
    if delivery.failing_since is not None and (
            _failing_for_s(delivery, now) >= options.retry_horizon_s):
        reason = (f"gave up after {_hours(options.retry_horizon_s)}: {label} is still failing "
                  f"(last error: {delivery.last_error or 'none'})")
        set_delivery_state(session, delivery, DeliveryState.FAILED, reason)
        return DeliveryResult(DeliveryState.FAILED, reason, delivery.attempts)
    reason = (f"not tried: {label} is failing; waiting for its next attempt (report "
              f"{report_id}) at {until:%Y-%m-%d %H:%M:%S} UTC")
    set_delivery_state(session, delivery, DeliveryState.RETRYING, reason, next_attempt_at=until)
    return DeliveryResult(DeliveryState.RETRYING, reason, delivery.attempts,
                          max(0.0, (until - now).total_seconds()))


def _start(sessions: sessionmaker[Session], key: DeliveryKey,
           destinations: Mapping[str, AnyDestination], options: DeliveryOptions,
           only_when_due: bool) -> tuple[DeliveryResult | None, Report | None, int]:
    """Check the row and the rules; count the attempt. A result means: nothing to send."""
    now = utcnow()
    label = key.destination
    with sessions.begin() as session:
        delivery = get_delivery(session, key.report_id, label, key.item)
        report = session.get(Report, key.report_id)
        if delivery is None or report is None:
            logger.warning("report %d: no delivery to %s recorded; nothing to do",
                           key.report_id, label)
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
        if not destination.shadow:
            waiting = _wait_for_destination(session, delivery, label, options, now)
            if waiting is not None:
                return waiting, None, 0
        delivery.attempts += 1  # counted before trying, so a crash mid-send still counts
        delivery.next_attempt_at = now + dt.timedelta(seconds=options.lease_s)
        return None, report, delivery.attempts


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def _finish(sessions: sessionmaker[Session], key: DeliveryKey, attempts: int,
            outcome: DeliveryOutcome, options: DeliveryOptions) -> DeliveryResult:
    """Record the outcome: the state, the error or warning, the next attempt; release the
    destination's waiting deliveries once one was sent."""
    now = utcnow()
    reason = outcome.reason
    retry_in: float | None = None
    released: list[tuple[int, str, DeliveryItem]] = []
    with sessions.begin() as session:
        delivery = get_delivery(session, key.report_id, key.destination, key.item)
        if outcome.kind is OutcomeKind.SENT:
            state = DeliveryState.SENT
        elif outcome.kind is OutcomeKind.SHADOW:
            state = DeliveryState.SHADOW
        elif outcome.kind is OutcomeKind.RETRY:
            failing_for = 0.0 if delivery is None else _failing_for_s(delivery, now)
            retry_in = retry_in_s(attempts, failing_for, base_s=options.backoff_s,
                                  max_s=options.backoff_max_s, horizon_s=options.retry_horizon_s,
                                  jitter=options.jitter)
            state = DeliveryState.FAILED if retry_in is None else DeliveryState.RETRYING
            if retry_in is None:
                reason = f"gave up after {attempts} attempts over {_hours(failing_for)}: {reason}"
        else:
            state = DeliveryState.FAILED
        if delivery is not None:
            if state is DeliveryState.SENT:
                error = outcome.warning or None
            else:
                error = None if state is DeliveryState.SHADOW else reason
            due = None if retry_in is None else now + dt.timedelta(seconds=retry_in)
            set_delivery_state(session, delivery, state, error, next_attempt_at=due)
            if state is DeliveryState.SENT:
                released = release_destination(session, key.destination, now)
    return DeliveryResult(state, reason, attempts, retry_in,
                          tuple(DeliveryKey(r, d, i) for r, d, i in released))


def _send(send: Sender, outgoing: Outgoing, attempt: int) -> DeliveryOutcome:
    """One try of the sender; whatever it raises becomes an outcome with the reason."""
    label = outgoing.destination.label
    try:
        return send(outgoing)
    except DeliveryError as exc:  # the file or the TLS material or a credential is unusable
        return DeliveryOutcome(OutcomeKind.FAILED, str(exc), destination=label)
    except Exception as exc:  # recorded, never lost: retried when it may pass
        kind = OutcomeKind.RETRY if is_transient(exc) else OutcomeKind.FAILED
        logger.warning("report %d -> %s: attempt %d raised %s", outgoing.report.id, label,
                       attempt, type(exc).__name__)
        return DeliveryOutcome(kind, describe(exc), destination=label)


def _after_sent(commit: CommitHook | None, key: DeliveryKey, outgoing: Outgoing) -> None:
    """Ask for Storage Commitment of a DICOM item sent to a destination with ``commit``."""
    destination = outgoing.destination
    if commit is None or not isinstance(destination, Destination) or not destination.commit:
        return
    if key.item not in (DeliveryItem.SR, DeliveryItem.IMAGE):
        return
    try:
        commit(key, outgoing)
    except Exception:  # the object was stored; the commitment is reported on its own
        logger.exception("report %d %s -> %s: Storage Commitment request failed",
                         key.report_id, key.item.value, key.destination)


def deliver_report(sessions: sessionmaker[Session], report_id: int, label: str, *,
                   destinations: Mapping[str, AnyDestination], send: Sender,
                   options: DeliveryOptions, only_when_due: bool = False,
                   item: DeliveryItem = DeliveryItem.SR,
                   commit: CommitHook | None = None) -> DeliveryResult:
    """Try one delivery of ``item`` of report ``report_id`` to ``label`` and record it.

    ``only_when_due`` (the task): do nothing while the delivery's ``next_attempt_at`` is in the
    future, that is during a retry's backoff or while another attempt holds it. ``commit``:
    called after a DICOM item was sent to a destination with the ``commit`` option.
    """
    key = DeliveryKey(report_id, label, item)
    done, report, attempts = _start(sessions, key, destinations, options, only_when_due)
    if done is not None:
        if done.state is DeliveryState.RETRYING or done.state is DeliveryState.FAILED:
            logger.info("report %d %s -> %s: %s", report_id, item.value, label, done.reason)
        return done
    assert report is not None
    outgoing = Outgoing(report, item, destinations[label])
    outcome = _send(send, outgoing, attempts)
    result = _finish(sessions, key, attempts, outcome, options)
    log = logger.warning if result.state in (DeliveryState.FAILED,
                                             DeliveryState.RETRYING) else logger.info
    log("report %d %s -> %s: %s after attempt %d (%s)%s", report_id, item.value, label,
        result.state.value if result.state else "?", attempts,
        outcome.warning or result.reason,
        "" if result.retry_in_s is None else f"; retry in {result.retry_in_s:.0f} s")
    if result.state is DeliveryState.SENT:
        _after_sent(commit, key, outgoing)
    return result
