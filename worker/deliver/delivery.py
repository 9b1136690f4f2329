"""Delivering a report to one destination, with the states recorded in the database.

Rules (docs/worker.md):

* ``sent``/``shadow``/``withheld``/``failed`` are final for a task: a redelivered task does
  nothing (``cxr-triage redeliver`` puts rows back to ``pending``).
* A transient problem (``retry``) is recorded as ``retrying`` with the attempt count and the
  error, until ``delivery_max_attempts`` attempts have been made; then ``failed``.
* Priority is never lowered once HIGH went out: a ROUTINE revision is ``withheld`` from a
  destination that was sent (or is being sent) a HIGH revision of the same study under the
  same model version. A new model version starts afresh.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.models import DeliveryState, Report
from db.reports import get_delivery, high_priority_on_its_way, set_delivery_state
from worker.deliver.cstore import DeliveryError, DeliveryOutcome, OutcomeKind, send_file
from worker.deliver.destinations import Destination
from worker.score.decision import Priority

logger = logging.getLogger(__name__)

Sender = Callable[[Path, Destination], DeliveryOutcome]
_FINAL = frozenset({DeliveryState.SENT, DeliveryState.SHADOW, DeliveryState.WITHHELD,
                    DeliveryState.FAILED})


@dataclass(frozen=True)
class DeliveryOptions:
    """The settings delivery uses."""

    calling_ae: str = "CXR_TRIAGE"
    max_attempts: int = 10
    backoff_s: float = 5.0
    backoff_max_s: float = 600.0


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


def _start(sessions: sessionmaker[Session], report_id: int, label: str,
           destinations: Mapping[str, Destination]
           ) -> tuple[DeliveryResult | None, Report | None, int]:
    """Check the row and the rules; count the attempt. A result means: nothing to send."""
    with sessions.begin() as session:
        delivery = get_delivery(session, report_id, label)
        report = session.get(Report, report_id)
        if delivery is None or report is None:
            logger.warning("report %d: no delivery to %s recorded; nothing to do", report_id, label)
            return DeliveryResult(None, "unknown delivery"), None, 0
        state = DeliveryState(delivery.state)
        if state in _FINAL:
            return DeliveryResult(state, "already final", delivery.attempts), None, 0
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
        return None, report, delivery.attempts


def _finish(sessions: sessionmaker[Session], report_id: int, label: str, attempts: int,
            outcome: DeliveryOutcome, options: DeliveryOptions) -> DeliveryResult:
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
        delivery = get_delivery(session, report_id, label)
        if delivery is not None:
            error = None if state in (DeliveryState.SENT, DeliveryState.SHADOW) else reason
            set_delivery_state(session, delivery, state, error)
    return DeliveryResult(state, reason, attempts, retry_in)


def deliver_report(sessions: sessionmaker[Session], report_id: int, label: str, *,
                   destinations: Mapping[str, Destination], send: Sender,
                   options: DeliveryOptions) -> DeliveryResult:
    """Try one delivery of report ``report_id`` to destination ``label`` and record it."""
    done, report, attempts = _start(sessions, report_id, label, destinations)
    if done is not None:
        return done
    assert report is not None
    try:
        outcome = send(Path(report.file_path), destinations[label])
    except DeliveryError as exc:  # the SR file or the TLS material is unusable
        outcome = DeliveryOutcome(OutcomeKind.FAILED, str(exc), destination=label)
    result = _finish(sessions, report_id, label, attempts, outcome, options)
    log = logger.warning if result.state in (DeliveryState.FAILED,
                                             DeliveryState.RETRYING) else logger.info
    log("report %d -> %s: %s after attempt %d (%s)%s", report_id, label,
        result.state.value if result.state else "?", attempts, result.reason,
        "" if result.retry_in_s is None else f"; retry in {result.retry_in_s:.0f} s")
    return result


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff before retry ``attempt`` (1-based): base, 2 base, 4 base ... max."""
    if attempt < 1:
        return 0.0
    exponent = min(attempt - 1, 32)
    return float(min(max_s, base_s * math.pow(2, exponent)))
