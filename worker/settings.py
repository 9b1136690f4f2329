"""Worker settings, read from ``TRIAGE_*`` environment variables (CLI flags override).

One object, :class:`WorkerSettings`, holds everything the worker, ``rescore`` and ``drift``
read; its parts are nested frozen dataclasses: :class:`InferenceSettings` (how the ensemble
runs, the same for live scoring and re-scoring) and :class:`RescoreSettings`. Every default is
written once, as a field default; ``from_env`` falls back to it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.commitment import REPORT_WAIT_S
from common.config import (
    SettingError,
    default_var_dir,
    env_bool,
    env_float,
    env_int,
    env_opt_path,
    env_path,
    env_str,
)
from common.queues import DEFAULT_SCORE_LEASE_S, BrokerSettings
from db.settings import DbSettings, default_db_url

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
BACKENDS = ("auto", "torch", "openvino")
# What every command runs with TRIAGE_INFERENCE_PRECISION/_BACKEND unset: the fastest path whose
# decisions equal fp32 here (worker.score.precision). The field defaults of InferenceSettings
# are the exact reference (torch fp32) that code building settings by hand compares against.
ENV_DEFAULT_PRECISION = "auto"
ENV_DEFAULT_BACKEND = "auto"


class ResultImageMode(enum.StrEnum):
    """``TRIAGE_RESULT_IMAGE``: which reported studies get a result image (Secondary Capture
    with the heatmap and the result burned in; docs/sr.md)."""

    ALL = "all"
    FLAGGED = "flagged"  # suspected and indeterminate studies only
    OFF = "off"


@dataclass(frozen=True)
class InferenceSettings:
    """How the ensemble runs: one set of values for live scoring and both re-scoring paths.

    Values are checked where they are used (``Ensemble.load``) and, from the environment, by
    :class:`WorkerSettings`.

    Attributes
    ----------
    device : ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    torch_threads : intra-op threads per scoring process; 0: one per usable core
        (``common.threads``; ``up`` leaves the node one).
    precision : ``auto`` (the fastest path whose decisions equal fp32 on this hardware,
        :mod:`worker.score.precision`; the default from the environment), ``fp32`` (exact
        reference; the field default), ``bf16`` or ``int8`` (OpenVINO, needs
        ``cxr-triage model quantize``).
    backend : ``auto`` (OpenVINO when installed, on the CPU; the default from the
        environment), ``torch`` (reference; the field default) or ``openvino`` (one compiled
        graph, CPU only).
    openvino_cache_dir : where converted OpenVINO graphs (fp32, int8) are kept, per model
        version.
    exact_margin : with a fast path, images this close to the threshold are rescored in fp32.
    gate_margin : with a fast path, images whose image-gate score is within this share of
        the gate threshold are rescored in fp32 too, so not-assessable decisions match fp32.
    """

    device: str = "auto"
    torch_threads: int = 0
    precision: str = "fp32"
    backend: str = "torch"
    openvino_cache_dir: Path = dataclasses.field(
        default_factory=lambda: default_var_dir() / "openvino")
    exact_margin: float = 0.02
    gate_margin: float = 0.05

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InferenceSettings:
        d = cls()
        return cls(
            device=env_str(env, "DEVICE", d.device).lower(),
            torch_threads=env_int(env, "TORCH_THREADS", d.torch_threads),
            precision=env_str(env, "INFERENCE_PRECISION", ENV_DEFAULT_PRECISION).lower(),
            backend=env_str(env, "INFERENCE_BACKEND", ENV_DEFAULT_BACKEND).lower(),
            openvino_cache_dir=env_path(env, "OPENVINO_CACHE_DIR", d.openvino_cache_dir),
            exact_margin=env_float(env, "EXACT_MARGIN", d.exact_margin),
            gate_margin=env_float(env, "GATE_EXACT_MARGIN", d.gate_margin),
        )

    def check(self) -> None:
        """Raise :class:`SettingError` naming the ``TRIAGE_*`` variable of a bad value."""
        if self.device not in DEVICES:
            raise SettingError(f"TRIAGE_DEVICE={self.device!r}; use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise SettingError(f"TRIAGE_INFERENCE_PRECISION={self.precision!r}; "
                               f"use one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise SettingError(f"TRIAGE_INFERENCE_BACKEND={self.backend!r}; "
                               f"use one of {', '.join(BACKENDS)}")
        if self.torch_threads < 0:
            raise SettingError("TRIAGE_TORCH_THREADS must be 0 (one per core) or more")


def default_loader_workers() -> int:
    """On a 2-core machine none: the live path's decoding process decodes one batch ahead (a
    DataLoader process took CPU from inference: bench/rescore.py measured 0.60 of the live rate
    with one against 0.97 without); two DataLoader processes on larger machines."""
    return 0 if (os.cpu_count() or 1) <= 2 else 2


@dataclass(frozen=True)
class RescoreSettings:
    """``cxr-triage rescore`` and ``drift`` specifics; docs/rescore.md describes each.

    Attributes
    ----------
    batch : images per forward pass (and instance ids per distributed task).
    loader_workers : DataLoader processes decoding and preprocessing ahead of the model; 0:
        the live path's decoding process, one batch ahead.
    stall_s : ``--distributed`` gives up (exit 1) after this long without progress.
    progress_log_s : a progress line is logged this often (the bar shows only on a terminal).
    drift_psi : PSI above which ``drift`` warns (0.1 moderate, 0.2 large shift).
    drift_ks : KS statistic above which ``drift`` warns.
    drift_rate : absolute change of the indeterminate rate above which ``drift`` warns.
    drift_samples : mean probabilities kept per run for ``drift`` (a deterministic subsample).
    """

    batch: int = 8
    loader_workers: int = dataclasses.field(default_factory=default_loader_workers)
    stall_s: float = 600.0
    progress_log_s: float = 30.0
    drift_psi: float = 0.2
    drift_ks: float = 0.2
    drift_rate: float = 0.05
    drift_samples: int = 20000

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise SettingError("TRIAGE_RESCORE_BATCH (--batch-size) must be at least 1")
        if self.loader_workers < 0:
            raise SettingError("TRIAGE_RESCORE_WORKERS (--workers) must be 0 or more")
        if self.drift_samples < 10:
            raise SettingError("TRIAGE_DRIFT_SAMPLES must be at least 10")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RescoreSettings:
        d = cls()
        return cls(
            batch=env_int(env, "RESCORE_BATCH", d.batch),
            loader_workers=env_int(env, "RESCORE_WORKERS", d.loader_workers),
            stall_s=env_float(env, "RESCORE_STALL_S", d.stall_s),
            progress_log_s=env_float(env, "RESCORE_PROGRESS_LOG_S", d.progress_log_s),
            drift_psi=env_float(env, "DRIFT_PSI_THRESHOLD", d.drift_psi),
            drift_ks=env_float(env, "DRIFT_KS_THRESHOLD", d.drift_ks),
            drift_rate=env_float(env, "DRIFT_RATE_THRESHOLD", d.drift_rate),
            drift_samples=env_int(env, "DRIFT_SAMPLES", d.drift_samples),
        )


def _under_var(name: str) -> Path:
    return default_var_dir() / name


@dataclass(frozen=True)
class WorkerSettings:
    """Everything ``cxr-triage worker``, ``rescore`` and ``drift`` need; docs/worker.md and
    docs/rescore.md describe each setting.

    Attributes
    ----------
    model_dir : ensemble directory holding ``ensemble.json`` (``TRIAGE_MODEL_DIR``); used when
        no model has been promoted from the model store.
    model_store : where ``model import`` copies ensembles, one folder per model version.
    model_check_s : how often (at most) a worker asks the database which model is live.
    acceptance_file : the site's acceptance criteria for ``validate`` (YAML or JSON).
    destinations : ``TRIAGE_DESTINATIONS`` as written (parsed by ``worker.deliver.destinations``).
    storage_dir : the node's storage; SRs go to ``sr_dir`` (default ``<storage_dir>/sr``).
    study_quiet_s : a study is reported once no image arrived for this long.
    report_max_wait_s : report anyway after this long even if images are still unscored.
    indeterminate_std : fold standard deviation above which a study is ``indeterminate``.
    score_batch : images scored together in one forward pass.
    score_concurrency, deliver_concurrency : processes of a worker on those queues.
    score_lease_s : a ``scoring`` claim older than this may be taken over by another task.
    decode_ahead : while a batch is predicted, claim the next one on a second thread and have
        it decoded by a decoding process (``worker.score.live``, ``worker.score.ahead``).
    delivery_retry_horizon_s : a delivery that keeps failing is retried (capped, jittered
        exponential backoff) until this long after its first failure; then it is ``failed``.
    delivery_backoff_s, delivery_backoff_max_s : exponential backoff base and cap.
    delivery_connect_timeout_s : TCP connect timeout of C-STORE and STOW-RS peers.
    delivery_timeout_s : how long a delivery waits for an answer (A-ASSOCIATE-AC at most 30 s,
        each DIMSE reply, each network read, the HTTP response of a STOW-RS destination without
        its own ``timeout=``).
    commitment_wait_s : after a Storage Commitment request (``;commit``), how long to wait for
        the N-EVENT-REPORT on the same association; most PACS (Orthanc among them) answer on an
        association of their own, which the node records whenever it comes.
    destination_alert_s : a destination whose deliveries have been failing for longer than this
        is reported (``deliveries --failing``, ``/readyz``, ``/metrics``).
    calling_ae : the calling AE title of the C-STORE SCU.
    result_image : which reported studies also get a result image (``all``, ``flagged``:
        suspected and indeterminate only, ``off``).
    inference : how the ensemble runs (device, threads, precision, backend, ...).
    rescore : ``rescore`` and ``drift`` specifics.
    db, broker : shared with the node.
    """

    model_dir: Path = dataclasses.field(default_factory=lambda: _under_var("model"))
    model_store: Path = dataclasses.field(default_factory=lambda: _under_var("models"))
    model_check_s: float = 5.0
    acceptance_file: Path | None = None
    destinations: str = ""
    storage_dir: Path = dataclasses.field(default_factory=lambda: _under_var("storage"))
    sr_dir: Path | None = None
    study_quiet_s: float = 10.0
    report_max_wait_s: float = 600.0
    indeterminate_std: float = 0.2
    score_batch: int = 8
    score_concurrency: int = 1
    deliver_concurrency: int = 2
    score_lease_s: float = DEFAULT_SCORE_LEASE_S
    decode_ahead: bool = True
    delivery_retry_horizon_s: float = 86400.0
    delivery_backoff_s: float = 5.0
    delivery_backoff_max_s: float = 600.0
    delivery_connect_timeout_s: float = 10.0
    delivery_timeout_s: float = 60.0
    commitment_wait_s: float = REPORT_WAIT_S
    destination_alert_s: float = 900.0
    calling_ae: str = "CXR_TRIAGE"
    result_image: ResultImageMode = ResultImageMode.FLAGGED
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)
    rescore: RescoreSettings = dataclasses.field(default_factory=RescoreSettings)
    db: DbSettings = dataclasses.field(default_factory=lambda: DbSettings(default_db_url()))
    broker: BrokerSettings = dataclasses.field(default_factory=BrokerSettings)

    def __post_init__(self) -> None:
        self.inference.check()
        for name in ("score_batch", "score_concurrency", "deliver_concurrency"):
            if getattr(self, name) < 1:
                raise SettingError(f"TRIAGE_{name.upper()} must be at least 1")
        if self.delivery_retry_horizon_s < 0:
            raise SettingError("TRIAGE_DELIVERY_RETRY_HORIZON_S must be 0 (no retries) or more")
        for name in ("delivery_connect_timeout_s", "delivery_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingError(f"TRIAGE_{name.upper()} must be more than 0")
        if self.commitment_wait_s < 0:
            raise SettingError("TRIAGE_COMMITMENT_WAIT_S must be 0 or more")

    @property
    def report_dir(self) -> Path:
        """Where SR files are written."""
        return self.sr_dir if self.sr_dir is not None else self.storage_dir / "sr"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        d = cls()
        return cls(
            model_dir=env_path(env, "MODEL_DIR", d.model_dir),
            model_store=env_path(env, "MODEL_STORE", d.model_store),
            model_check_s=env_float(env, "MODEL_CHECK_S", d.model_check_s),
            acceptance_file=env_opt_path(env, "ACCEPTANCE_FILE"),
            destinations=env_str(env, "DESTINATIONS", d.destinations),
            storage_dir=env_path(env, "STORAGE_DIR", d.storage_dir),
            sr_dir=env_opt_path(env, "SR_DIR"),
            study_quiet_s=env_float(env, "STUDY_QUIET_S", d.study_quiet_s),
            report_max_wait_s=env_float(env, "REPORT_MAX_WAIT_S", d.report_max_wait_s),
            indeterminate_std=env_float(env, "INDETERMINATE_STD", d.indeterminate_std),
            score_batch=env_int(env, "SCORE_BATCH", d.score_batch),
            score_concurrency=env_int(env, "SCORE_CONCURRENCY", d.score_concurrency),
            deliver_concurrency=env_int(env, "DELIVER_CONCURRENCY", d.deliver_concurrency),
            score_lease_s=env_float(env, "SCORE_LEASE_S", d.score_lease_s),
            decode_ahead=env_bool(env, "DECODE_AHEAD", d.decode_ahead),
            delivery_retry_horizon_s=env_float(env, "DELIVERY_RETRY_HORIZON_S",
                                               d.delivery_retry_horizon_s),
            delivery_backoff_s=env_float(env, "DELIVERY_BACKOFF_S", d.delivery_backoff_s),
            delivery_backoff_max_s=env_float(env, "DELIVERY_BACKOFF_MAX_S",
                                             d.delivery_backoff_max_s),
            delivery_connect_timeout_s=env_float(env, "DELIVERY_CONNECT_TIMEOUT_S",
                                                 d.delivery_connect_timeout_s),
            delivery_timeout_s=env_float(env, "DELIVERY_TIMEOUT_S", d.delivery_timeout_s),
            commitment_wait_s=env_float(env, "COMMITMENT_WAIT_S", d.commitment_wait_s),
            destination_alert_s=env_float(env, "DESTINATION_ALERT_S", d.destination_alert_s),
            calling_ae=env_str(env, "CALLING_AE", d.calling_ae),
            result_image=_result_image_mode(env_str(env, "RESULT_IMAGE", d.result_image)),
            inference=InferenceSettings.from_env(env),
            rescore=RescoreSettings.from_env(env),
            db=DbSettings.from_env(env),
            broker=BrokerSettings.from_env(env),
        )


def _result_image_mode(value: str) -> ResultImageMode:
    try:
        return ResultImageMode(value.strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in ResultImageMode)
        raise SettingError(f"TRIAGE_RESULT_IMAGE={value!r}; use one of {allowed}") from None
