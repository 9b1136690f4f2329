"""Settings of ``cxr-triage rescore`` and ``cxr-triage drift`` (``TRIAGE_*``; flags override).

The model, device, database, broker, destinations and SR folder come from
:class:`worker.settings.WorkerSettings`; these are the re-scoring and drift specifics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingError, env_float, env_int


def default_loader_workers() -> int:
    """One decoding process on a 2-core machine (a second one takes CPU from inference:
    bench/rescore.py measured 0.92 of the ensemble's throughput on JPEG 2000 with one, 0.89
    with two), two on larger machines."""
    return 1 if (os.cpu_count() or 1) <= 2 else 2


@dataclass(frozen=True)
class RescoreSettings:
    """docs/rescore.md describes each setting.

    Attributes
    ----------
    batch : images per forward pass (and instance ids per distributed task).
    loader_workers : DataLoader processes decoding and preprocessing ahead of the model.
    stall_s : ``--distributed`` gives up (exit 1) after this long without progress.
    progress_log_s : a progress line is logged this often (the bar shows only on a terminal).
    drift_psi : PSI above which ``drift`` warns (0.1 moderate, 0.2 large shift).
    drift_ks : KS statistic above which ``drift`` warns.
    drift_rate : absolute change of the indeterminate rate above which ``drift`` warns.
    drift_samples : mean probabilities kept per run for ``drift`` (a deterministic subsample).
    kill_after_batches : tests only: SIGKILL the run itself after this many batches.
    """

    batch: int = 8
    loader_workers: int = 2
    stall_s: float = 600.0
    progress_log_s: float = 30.0
    drift_psi: float = 0.2
    drift_ks: float = 0.2
    drift_rate: float = 0.05
    drift_samples: int = 20000
    kill_after_batches: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise SettingError("TRIAGE_RESCORE_BATCH (--batch-size) must be at least 1")
        if self.loader_workers < 0:
            raise SettingError("TRIAGE_RESCORE_WORKERS (--workers) must be 0 or more")
        if self.drift_samples < 10:
            raise SettingError("TRIAGE_DRIFT_SAMPLES must be at least 10")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RescoreSettings:
        return cls(
            batch=env_int(env, "RESCORE_BATCH", 8),
            loader_workers=env_int(env, "RESCORE_WORKERS", default_loader_workers()),
            stall_s=env_float(env, "RESCORE_STALL_S", 600.0),
            progress_log_s=env_float(env, "RESCORE_PROGRESS_LOG_S", 30.0),
            drift_psi=env_float(env, "DRIFT_PSI_THRESHOLD", 0.2),
            drift_ks=env_float(env, "DRIFT_KS_THRESHOLD", 0.2),
            drift_rate=env_float(env, "DRIFT_RATE_THRESHOLD", 0.05),
            drift_samples=env_int(env, "DRIFT_SAMPLES", 20000),
            kill_after_batches=env_int(env, "TEST_RESCORE_KILL_AFTER_BATCHES", 0),
        )
