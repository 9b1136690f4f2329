"""Prometheus metrics shared by the node, the workers and the web app (prometheus-client).

With ``TRIAGE_METRICS_DIR`` set, every process writes its counters to files there
(prometheus-client's multiprocess mode) and the web app's ``/metrics`` adds them up; without
it each process counts only for itself. :func:`enable_multiprocess` must run before
prometheus-client is first imported, so the metrics are created lazily, on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from functools import cache, wraps
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from common.config import env_opt_path

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_T = TypeVar("_T")
_CREATING = threading.Lock()


def _once(build: Callable[[], _T]) -> Callable[[], _T]:
    """Create a metric on first use, once per process even when association threads race
    (a second registration of the same name is an error in prometheus-client)."""
    cached = cache(build)

    @wraps(build)
    def get() -> _T:
        with _CREATING:
            return cached()

    return get


def metrics_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``TRIAGE_METRICS_DIR``: where the processes share their counters (unset: per process)."""
    return env_opt_path(env, "METRICS_DIR")


def enable_multiprocess(env: Mapping[str, str] | None = None) -> Path | None:
    """Point prometheus-client at ``TRIAGE_METRICS_DIR`` (created) for this process."""
    folder = metrics_dir(env)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(MULTIPROC_ENV, str(folder))
    return folder


@_once
def instances_total() -> Counter:
    """C-STORE outcomes at the node: ``outcome`` received/refused/failed, ``reason``."""
    from prometheus_client import Counter

    return Counter("triage_instances", "Instances offered to the node, by outcome and reason",
                   ["outcome", "reason"])


@_once
def scores_total() -> Counter:
    """Images scored by the workers, by decision."""
    from prometheus_client import Counter

    return Counter("triage_scores", "Images scored, by decision", ["decision"])


@_once
def scoring_seconds() -> Histogram:
    """Wall time of one scoring batch (claim to recorded scores)."""
    from prometheus_client import Histogram

    return Histogram("triage_scoring_seconds", "Scoring latency per batch",
                     buckets=LATENCY_BUCKETS_S)


@_once
def reports_total() -> Counter:
    """Report steps, by action (written, wait, retry, failed, ...)."""
    from prometheus_client import Counter

    return Counter("triage_reports", "Report steps, by outcome", ["outcome"])


@_once
def deliveries_total() -> Counter:
    """Delivery attempts, by resulting state (sent, retrying, failed, ...)."""
    from prometheus_client import Counter

    return Counter("triage_deliveries", "Delivery attempts, by outcome", ["outcome"])
