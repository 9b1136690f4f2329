"""Worker settings, read from ``TRIAGE_*`` environment variables (CLI flags override)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import (
    SettingError,
    default_var_dir,
    env_float,
    env_int,
    env_opt_path,
    env_path,
    env_str,
)
from common.queues import BrokerSettings
from db.settings import DbSettings

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class WorkerSettings:
    """Everything ``cxr-triage worker`` needs; docs/worker.md describes each setting.

    Attributes
    ----------
    model_dir : ensemble directory holding ``ensemble.json`` (``TRIAGE_MODEL_DIR``).
    destinations : ``TRIAGE_DESTINATIONS`` as written (parsed by ``worker.deliver.destinations``).
    storage_dir : the node's storage; SRs go to ``sr_dir`` (default ``<storage_dir>/sr``).
    study_quiet_s : a study is reported once no image arrived for this long.
    report_max_wait_s : report anyway after this long even if images are still unscored.
    indeterminate_std : fold standard deviation above which a study is ``indeterminate``.
    score_batch : images scored together in one forward pass.
    torch_threads : intra-op threads per scoring process; 0 keeps torch's default.
    device : ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    inference_precision : ``fp32`` (exact reference) or ``bf16`` weights and activations.
    inference_backend : ``torch`` (reference) or ``openvino`` (one compiled graph, CPU only).
    openvino_cache_dir : where converted OpenVINO graphs are kept, per model version.
    exact_margin : with a fast path, images this close to the threshold are rescored in fp32.
    score_concurrency, deliver_concurrency : processes of a worker on those queues.
    score_lease_s : a ``scoring`` claim older than this may be taken over by another task.
    delivery_max_attempts : C-STORE attempts before a delivery is ``failed``.
    delivery_backoff_s, delivery_backoff_max_s : exponential backoff base and cap.
    calling_ae : the calling AE title of the C-STORE SCU.
    hold_after_claim_s : fault-injection tests only: pause after claiming, before scoring.
    """

    model_dir: Path = Path("var/model")
    destinations: str = ""
    storage_dir: Path = Path("var/storage")
    sr_dir: Path | None = None
    study_quiet_s: float = 10.0
    report_max_wait_s: float = 600.0
    indeterminate_std: float = 0.2
    score_batch: int = 8
    torch_threads: int = 0
    device: str = "auto"
    inference_precision: str = "fp32"
    inference_backend: str = "torch"
    exact_margin: float = 0.02
    openvino_cache_dir: Path = Path("var/openvino")
    score_concurrency: int = 1
    deliver_concurrency: int = 2
    score_lease_s: float = 600.0
    delivery_max_attempts: int = 10
    delivery_backoff_s: float = 5.0
    delivery_backoff_max_s: float = 600.0
    calling_ae: str = "CXR_TRIAGE"
    hold_after_claim_s: float = 0.0
    db: DbSettings = dataclasses.field(default_factory=lambda: DbSettings(url="sqlite://"))
    broker: BrokerSettings = dataclasses.field(default_factory=BrokerSettings)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingError(f"TRIAGE_DEVICE={self.device!r}; use one of {', '.join(DEVICES)}")
        for name in ("score_batch", "score_concurrency", "deliver_concurrency",
                     "delivery_max_attempts"):
            if getattr(self, name) < 1:
                raise SettingError(f"TRIAGE_{name.upper()} must be at least 1")
        if self.inference_precision not in ("fp32", "bf16"):
            raise SettingError(f"TRIAGE_INFERENCE_PRECISION={self.inference_precision!r}; "
                               "use fp32 or bf16")
        if self.inference_backend not in ("torch", "openvino"):
            raise SettingError(f"TRIAGE_INFERENCE_BACKEND={self.inference_backend!r}; "
                               "use torch or openvino")
        if self.torch_threads < 0:
            raise SettingError("TRIAGE_TORCH_THREADS must be 0 (torch default) or more")

    @property
    def report_dir(self) -> Path:
        """Where SR files are written."""
        return self.sr_dir if self.sr_dir is not None else self.storage_dir / "sr"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        var = default_var_dir()
        return cls(
            model_dir=env_path(env, "MODEL_DIR", var / "model"),
            destinations=env_str(env, "DESTINATIONS", ""),
            storage_dir=env_path(env, "STORAGE_DIR", var / "storage"),
            sr_dir=env_opt_path(env, "SR_DIR"),
            study_quiet_s=env_float(env, "STUDY_QUIET_S", 10.0),
            report_max_wait_s=env_float(env, "REPORT_MAX_WAIT_S", 600.0),
            indeterminate_std=env_float(env, "INDETERMINATE_STD", 0.2),
            score_batch=env_int(env, "SCORE_BATCH", 8),
            torch_threads=env_int(env, "TORCH_THREADS", 0),
            device=env_str(env, "DEVICE", "auto").lower(),
            inference_precision=env_str(env, "INFERENCE_PRECISION", "fp32").lower(),
            inference_backend=env_str(env, "INFERENCE_BACKEND", "torch").lower(),
            exact_margin=env_float(env, "EXACT_MARGIN", 0.02),
            openvino_cache_dir=env_path(env, "OPENVINO_CACHE_DIR", var / "openvino"),
            score_concurrency=env_int(env, "SCORE_CONCURRENCY", 1),
            deliver_concurrency=env_int(env, "DELIVER_CONCURRENCY", 2),
            score_lease_s=env_float(env, "SCORE_LEASE_S", 600.0),
            delivery_max_attempts=env_int(env, "DELIVERY_MAX_ATTEMPTS", 10),
            delivery_backoff_s=env_float(env, "DELIVERY_BACKOFF_S", 5.0),
            delivery_backoff_max_s=env_float(env, "DELIVERY_BACKOFF_MAX_S", 600.0),
            calling_ae=env_str(env, "CALLING_AE", "CXR_TRIAGE"),
            hold_after_claim_s=env_float(env, "TEST_HOLD_AFTER_CLAIM_S", 0.0),
            db=DbSettings.from_env(env),
            broker=BrokerSettings.from_env(env),
        )
