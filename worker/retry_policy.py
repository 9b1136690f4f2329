"""Celery retry options shared by every task that touches the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

# A database restart or failover surfaces as OperationalError: retry with backoff, then give up
# (the row stays in a state the sweeper or a redelivery picks up again).
DB_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 20,
}
