"""What is worth retrying, how long to wait, and the Celery retry options of the tasks.

A step that fails is never dropped: the report and delivery steps record every failure with its
reason. Failures that can succeed later (a file system error such as a full disk, a database
outage) are retried with exponential backoff; anything else is recorded as ``failed``. A delivery
that keeps failing is retried with capped, jittered backoff until its retry horizon (a duration
since its first failure, ``TRIAGE_DELIVERY_RETRY_HORIZON_S``) has passed.
"""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from common.errors import TriageError

# A retry waits its backoff less up to this fraction at random (``backoff_s``).
DELIVERY_JITTER = 0.2
_RANDOM = random.Random()

# Database errors that come and go: a restart, a failover, a lock held too long, a full pool.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (
    OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)

# A database outage while a task records its outcome: Celery retries the task with backoff,
# then gives up; the step's due time stays in the database, so the node's reconciler publishes
# it again later.
DB_RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_DB_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 20,
}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from (``raise ... from``), may go away by
    itself: an ``OSError`` (disk full, storage not mounted, connection refused) or a database
    outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (OSError, *TRANSIENT_DB_ERRORS)):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def describe(exc: BaseException) -> str:
    """What went wrong, for the record: ``Type: message`` for our own errors, OS and database
    errors (whose messages name files and servers); only the type for anything else, whose
    message may quote header values. A ``raise ... from`` cause is named too."""
    text = _message(exc)
    cause = exc.__cause__
    if cause is not None:
        text += f" (from {_message(cause)})"
    return text


def _message(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, DBAPIError):
        return f"{name}: {str(exc.orig).strip()}"  # without the statement and its parameters
    if isinstance(exc, (TriageError, OSError)):
        return f"{name}: {exc}"
    return f"{name} (unexpected; the worker log says where)"


def backoff_s(attempt: int, *, base_s: float, max_s: float, jitter: float = 0.0,
              rng: random.Random | None = None) -> float:
    """Capped exponential backoff before retry ``attempt`` (1-based): base, 2 base, 4 base ...
    max; ``jitter`` (0-1) takes up to that fraction off at random, so deliveries that failed
    together (a PACS outage) do not all come back in the same second."""
    if attempt < 1:
        return 0.0
    exponent = min(attempt - 1, 32)
    delay = float(min(max_s, base_s * math.pow(2, exponent)))
    if jitter > 0:
        delay *= 1.0 - min(jitter, 1.0) * (rng or _RANDOM).random()
    return delay


def retry_in_s(attempt: int, failing_for_s: float, *, base_s: float, max_s: float,
               horizon_s: float, jitter: float = DELIVERY_JITTER,
               rng: random.Random | None = None) -> float | None:
    """When to try a failing delivery again, or ``None`` once ``horizon_s`` has passed since
    its first failure (``failing_for_s`` ago): then it is ``failed``. The last retry is moved
    up to the horizon, so the horizon itself is tried."""
    left = horizon_s - failing_for_s
    if left <= 0:
        return None
    return min(backoff_s(attempt, base_s=base_s, max_s=max_s, jitter=jitter, rng=rng), left)
