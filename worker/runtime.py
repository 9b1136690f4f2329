"""Per-process state of a worker: database sessions, destinations, the ensemble (lazily).

Nothing here is created at import time or in the parent before the fork: the engine and the
ensemble are built on first use in each pool process, and ``after_fork`` drops connections a
process inherited (``engine.dispose(close=False)``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_session_factory
from training.manifest import EnsembleManifest, load_manifest
from worker.deliver.delivery import DeliveryOptions
from worker.deliver.destinations import AnyDestination, parse_destinations
from worker.engine import make_worker_engine  # re-exported: its old home
from worker.models.store import live_model_dir
from worker.report.identity import ModelIdentity, model_identity
from worker.report.study import ReportOptions
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


class WorkerContext:
    """What the tasks of one worker process share."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.destinations: dict[str, AnyDestination] = {
            d.label: d for d in parse_destinations(settings.destinations)
        }
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._ensemble: Ensemble | None = None
        self._manifest: EnsembleManifest | None = None
        self._model_dir: Path = settings.model_dir
        self._checked_at: float | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                self._engine = make_worker_engine(self.settings.db.url)
                self._sessions = make_session_factory(self._engine)
            return self._sessions

    @property
    def model_dir(self) -> Path:
        """The folder of the model this process scores with (after the last check)."""
        return self._model_dir

    def _refresh_locked(self) -> None:
        """Follow the live model: ask the database at most every ``model_check_s``.

        The promoted version's store folder when one is live, else ``TRIAGE_MODEL_DIR``. A
        change drops the loaded ensemble; the next batch loads the new one (no restart).
        """
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.settings.model_check_s:
            return
        self._checked_at = now
        assert self._sessions is not None
        with self._sessions() as session:
            live = live_model_dir(session)
        wanted = self.settings.model_dir if live is None else live[1]
        if wanted != self._model_dir:
            logger.warning("live model changed: %s -> %s; loading it for the next batch",
                           self._model_dir, wanted)
            self._model_dir, self._ensemble, self._manifest = wanted, None, None

    def refresh(self) -> None:
        """Check which model is live (rate-limited); called before a batch is claimed."""
        _ = self.sessions  # built first: the property takes the lock itself
        with self._lock:
            self._refresh_locked()

    def ensemble(self) -> Ensemble:
        """The live ensemble, loaded (and hash-checked) on first use after each change."""
        self.refresh()
        with self._lock:
            if self._ensemble is None:
                self._ensemble = Ensemble.load(self._model_dir, self.settings.inference)
                self._manifest = self._ensemble.manifest
            return self._ensemble

    def model(self) -> tuple[ModelIdentity, str]:
        """Identity and model_version for reports, from the manifest (weights not loaded)."""
        self.refresh()
        with self._lock:
            if self._manifest is None:
                self._manifest = load_manifest(self._model_dir, verify_hashes=False)
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
                         retry_backoff_max_s=settings.delivery_backoff_max_s,
                         result_image=settings.result_image)


def delivery_options(settings: WorkerSettings) -> DeliveryOptions:
    """Delivery's options, from the worker settings (the worker and ``rescore``)."""
    return DeliveryOptions(calling_ae=settings.calling_ae,
                           retry_horizon_s=settings.delivery_retry_horizon_s,
                           backoff_s=settings.delivery_backoff_s,
                           backoff_max_s=settings.delivery_backoff_max_s,
                           lease_s=settings.score_lease_s,
                           connect_timeout_s=settings.delivery_connect_timeout_s,
                           timeout_s=settings.delivery_timeout_s,
                           commitment_wait_s=settings.commitment_wait_s)
