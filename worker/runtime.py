"""Per-process state of a worker: database sessions, destinations, the ensemble (lazily).

Nothing here is created at import time or in the parent before the fork: the engine and the
ensemble are built on first use in each pool process, and ``after_fork`` drops connections a
process inherited (``engine.dispose(close=False)``).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from training.manifest import EnsembleManifest, load_manifest
from worker.deliver.delivery import DeliveryOptions
from worker.deliver.destinations import Destination, parse_destinations
from worker.report.identity import ModelIdentity, model_identity
from worker.report.study import ReportOptions
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


def _begin_immediate(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction starts.

    With WAL, a transaction that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT)
    if another process committed in between; BEGIN IMMEDIATE waits (busy_timeout) instead.
    """
    def no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_implicit_begin)
    event.listen(engine, "begin", begin)


def make_worker_engine(url: str) -> Engine:
    """The database engine the worker uses (``db.session.make_engine`` plus the above)."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    return engine


class WorkerContext:
    """What the tasks of one worker process share."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.destinations: dict[str, Destination] = {
            d.label: d for d in parse_destinations(settings.destinations)
        }
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._ensemble: Ensemble | None = None
        self._manifest: EnsembleManifest | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                self._engine = make_worker_engine(self.settings.db.url)
                self._sessions = make_session_factory(self._engine)
            return self._sessions

    def ensemble(self) -> Ensemble:
        """The ensemble, loaded (and hash-checked) on first use in this process."""
        with self._lock:
            if self._ensemble is None:
                self._ensemble = Ensemble.load(self.settings.model_dir, self.settings.inference)
                self._manifest = self._ensemble.manifest
            return self._ensemble

    def model(self) -> tuple[ModelIdentity, str]:
        """Identity and model_version for reports, from the manifest (weights not loaded)."""
        with self._lock:
            if self._manifest is None:
                self._manifest = load_manifest(self.settings.model_dir, verify_hashes=False)
            return model_identity(self._manifest), self._manifest.model_version

    def after_fork(self, **_: Any) -> None:
        """Forget connections inherited from the parent without closing them (theirs)."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def scoring_options(self) -> ScoringOptions:
        return ScoringOptions.from_settings(self.settings, self.host)

    def report_options(self) -> ReportOptions:
        return report_options(self.settings, self.host)

    def delivery_options(self) -> DeliveryOptions:
        return delivery_options(self.settings)


def report_options(settings: WorkerSettings, host: str) -> ReportOptions:
    """Reporting's options, from the worker settings (the worker and ``rescore``)."""
    return ReportOptions(report_dir=settings.report_dir, quiet_s=settings.study_quiet_s,
                         max_wait_s=settings.report_max_wait_s, worker_host=host,
                         retry_backoff_s=settings.delivery_backoff_s,
                         retry_backoff_max_s=settings.delivery_backoff_max_s)


def delivery_options(settings: WorkerSettings) -> DeliveryOptions:
    """Delivery's options, from the worker settings (the worker and ``rescore``)."""
    return DeliveryOptions(calling_ae=settings.calling_ae,
                           max_attempts=settings.delivery_max_attempts,
                           backoff_s=settings.delivery_backoff_s,
                           backoff_max_s=settings.delivery_backoff_max_s,
                           lease_s=settings.score_lease_s)
