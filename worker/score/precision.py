"""Which precision and backend the ensemble runs in: ``auto`` picks the fastest exact path.

"Exact" means decisions equal to torch fp32: every fast path (bf16, int8, OpenVINO) hands the
images whose probability lands within ``TRIAGE_EXACT_MARGIN`` of the threshold to the fp32
models (:meth:`worker.score.ensemble.Ensemble.predict`). ``auto`` never picks what the hardware
lacks: bf16 only with native bf16 (AVX512-BF16, AMX-BF16, or a CUDA device with bf16), int8
only with int8 dot products (VNNI or AMX) and a current int8 graph of the model. Speeds behind
the order (docs/benchmarks.md, PERF-NOTES): on Zen 4 OpenVINO int8 > OpenVINO bf16 (5.1 img/s)
> torch bf16 (3.6) > OpenVINO fp32 (2.5) > torch fp32 (1.9); on Zen 3 OpenVINO fp32 (1.42) >
torch fp32 (1.07) > torch bf16 (0.15, emulated).

Nothing here imports torch: ``cxr-triage model list`` shows the choice without loading a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import TriageError
from common.hardware import Capabilities
from worker.settings import BACKENDS as BACKEND_SETTINGS
from worker.settings import PRECISIONS as PRECISION_SETTINGS

logger = logging.getLogger(__name__)
# Bumped whenever the OpenVINO graph's inputs or outputs change, so an older cached graph is
# not read (pf1: probabilities and the gate's pooled features).
GRAPH_FORMAT = "pf1"
INT8 = "int8"
# ``auto`` takes int8 only when, on the check images of the build, the measured margins
# re-score at most this share in fp32: a re-scored image costs the fp32 rate (a fifth of int8's
# or less), so above about a tenth the bf16 path is as fast and re-scores less
# (docs/benchmarks.md).
MAX_INT8_RESCORE_SHARE = 0.10
# The int8 recipe (worker/score/int8.py), here so that the CLI reads it without torch. The
# parts of each ResNet-50 a build may keep in floating point (NNCF's ignored scope): the stem
# (first convolution) and the four residual stages. Measured on a trained 10-fold ensemble
# (docs/benchmarks.md, bench/int8_scope.py): keeping the stem and layer1, with activation
# ranges over all calibration images, cut the largest error from 0.11 to 0.01 in probability
# and from 108 % to 10 % of the gate threshold, at 2.5x OpenVINO fp32 (3.7x with the kept parts
# in bf16 on AMX).
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
DEFAULT_KEEP: tuple[str, ...] = ("stem", "layer1")
# How activation ranges are estimated: NNCF's default averages each calibration image's
# minimum and maximum, which clips the activations of images unlike the average; ``minmax``
# takes the extremes over all of them.
RANGES = {"mean": "MEAN_MINMAX", "minmax": "MINMAX"}
DEFAULT_RANGES = "minmax"


class PrecisionError(TriageError):
    """The asked-for precision can't run here."""


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """``stages`` as a tuple, each one of :data:`STAGES`; :class:`PrecisionError` otherwise."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise PrecisionError(f"unknown stage(s) {', '.join(unknown)}: use {', '.join(STAGES)}")
    return tuple(stages)


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def graph_path(cache_dir: Path, model_version: str, size: int, kind: str) -> Path:
    """Where the converted graph of one model version, input size and kind (``f32`` or
    ``int8``) is cached; its sidecar metadata is the same path with ``.json``."""
    return cache_dir / f"{model_version}-{size}-{kind}-{GRAPH_FORMAT}.xml"


@dataclass(frozen=True)
class Int8Error:
    """How far the int8 graph strays from fp32, measured when it was built on images it was
    not calibrated on, and the re-check margins that follow (twice the largest error seen)."""

    images: int
    max_dp: float  # largest |int8 - fp32| of the ensemble's mean probability
    gate_deviation: float | None  # largest |int8 - fp32| gate score / gate threshold
    exact_margin: float  # probability margin the int8 path re-checks within
    gate_margin: float  # gate margin, a share of the gate threshold (0 without a gate)
    rescore_share: float  # share of the check images those margins send to fp32
    # share the default margins (what bf16 and OpenVINO fp32 re-check) would send to fp32
    default_share: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Int8Error | None:
        try:
            gate, default = data.get("gate_deviation"), data.get("default_margin_share")
            return cls(int(str(data["images"])), float(str(data["max_dp"])),
                       None if gate is None else float(str(gate)),
                       float(str(data["exact_margin"])), float(str(data["gate_margin"])),
                       float(str(data["rescore_share"])),
                       None if default is None else float(str(default)))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Int8Graph:
    """Whether a current int8 graph exists for a model, and why not when it doesn't; with the
    error measured when it was built (``None`` for graphs built before that was measured)."""

    ready: bool
    path: Path
    reason: str
    error: Int8Error | None = None
    rest: str = "fp32"  # what its unquantized parts compute in: fp32, or bf16 (AMX builds)
    kept: tuple[str, ...] = ()  # the stages it kept in floating point
    ranges: str = "mean"  # how its activation ranges were estimated (older graphs: NNCF's)

    @property
    def recipe(self) -> tuple[tuple[str, ...], str, str]:
        """How it was made: stages kept, activation ranges, float parts' precision."""
        return self.kept, self.ranges, self.rest

    def auto_refusal(self, gated: bool) -> str | None:
        """Why ``auto`` must not take this graph, or ``None`` when its measured margins keep
        decisions equal to fp32 while re-scoring few images."""
        if not self.ready:
            return self.reason
        if self.error is None:
            return ("the int8 graph predates error measurement (`cxr-triage model quantize "
                    "--force` rebuilds it)")
        if gated and self.error.gate_deviation is None:
            return ("the int8 graph was built before the image gate, so its gate error is "
                    "unmeasured (`cxr-triage model quantize --force`)")
        if self.error.rescore_share > MAX_INT8_RESCORE_SHARE:
            return (f"int8 strays from fp32 by up to {self.error.max_dp:.3f} in probability"
                    + ("" if self.error.gate_deviation is None else
                       f" and {self.error.gate_deviation:.0%} of the gate threshold")
                    + f", so its margins would re-score {self.error.rescore_share:.0%} of images "
                    f"in fp32 (more than {MAX_INT8_RESCORE_SHARE:.0%})")
        return None


def weights_digest(fold_hashes: Sequence[str]) -> str:
    """SHA-256 over the fold files' SHA-256s: changes whenever any fold's weights change."""
    return hashlib.sha256("".join(fold_hashes).encode()).hexdigest()


def int8_graph(cache_dir: Path, model_version: str, size: int,
               fold_hashes: Sequence[str]) -> Int8Graph:
    """The cached int8 graph of this model, if it exists and was built from these weights."""
    path = graph_path(cache_dir, model_version, size, INT8)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and path.with_suffix(".bin").is_file() and meta_path.is_file()):
        return Int8Graph(False, path, f"no int8 graph of model {model_version} in {cache_dir} "
                         "(`cxr-triage model quantize` builds it)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Int8Graph(False, path, f"int8 graph metadata {meta_path} unreadable: {exc}")
    if meta.get("weights_sha256") != weights_digest(fold_hashes):
        return Int8Graph(False, path, f"the int8 graph {path.name} was built from other "
                         "weights (`cxr-triage model quantize` rebuilds it)")
    calibration = meta.get("calibration", {})
    error, kept = meta.get("error"), meta.get("kept", [])
    return Int8Graph(True, path, f"the int8 graph of model {model_version} is built "
                     f"({calibration.get('images', '?')} calibration images)",
                     Int8Error.from_dict(error) if isinstance(error, dict) else None,
                     "bf16" if meta.get("rest_precision") == "bf16" else "fp32",
                     tuple(str(k) for k in kept) if isinstance(kept, list) else (),
                     str(meta.get("ranges", "mean")))


@dataclass(frozen=True)
class PrecisionChoice:
    """What runs, and why."""

    precision: str  # fp32, bf16 or int8
    backend: str  # torch or openvino
    reason: str

    def describe(self) -> str:
        return f"{self.precision} on {self.backend} ({self.reason})"


def _bf16_flag(caps: Capabilities) -> str:
    return "/".join(sorted(f for f in caps.flags if "bf16" in f)) or "no bf16 flag"


def _int8_flag(caps: Capabilities) -> str:
    return "/".join(sorted(f for f in caps.flags if "vnni" in f or f == "amx_int8"))


def _cuda(precision: str, caps: Capabilities) -> PrecisionChoice:
    """On a CUDA device the torch path runs; int8 is a CPU (OpenVINO) path only."""
    if precision == "int8":
        raise PrecisionError("TRIAGE_INFERENCE_PRECISION=int8 runs on the CPU (OpenVINO) only; "
                             "use auto, bf16 or fp32 on CUDA")
    if precision == "auto":
        if caps.gpu_bf16:
            return PrecisionChoice("bf16", "torch", f"auto: {caps.gpu or 'the GPU'} computes "
                                   "bf16 natively")
        return PrecisionChoice("fp32", "torch", f"auto: {caps.gpu or 'the GPU'} has no native "
                               "bf16")
    if precision == "bf16" and not caps.gpu_bf16:
        logger.warning("TRIAGE_INFERENCE_PRECISION=bf16 on %s, which has no native bf16: "
                       "expect it to be slower than fp32", caps.gpu or "this GPU")
    return PrecisionChoice(precision, "torch", f"TRIAGE_INFERENCE_PRECISION={precision}")


def _auto_cpu(caps: Capabilities, use_openvino: bool, int8_ready: bool,
              int8_reason: str, no_openvino: str, int8_refusal: str | None) -> PrecisionChoice:
    if use_openvino and caps.int8_dot and int8_ready and int8_refusal is None:
        return PrecisionChoice("int8", "openvino", f"auto: int8 dot products "
                               f"({_int8_flag(caps)}) and {int8_reason}")
    why_not_int8 = ("no VNNI/AMX for int8" if not caps.int8_dot else
                    no_openvino if not use_openvino else
                    int8_reason if not int8_ready else str(int8_refusal))
    if caps.native_bf16:
        backend = "openvino" if use_openvino else "torch"
        return PrecisionChoice("bf16", backend, f"auto: native bf16 ({_bf16_flag(caps)}); "
                               f"not int8: {why_not_int8}")
    backend = "openvino" if use_openvino else "torch"
    return PrecisionChoice("fp32", backend, f"auto: no native bf16 (bf16 would be emulated, "
                           f"slower than fp32); not int8: {why_not_int8}")


def choose_precision(precision: str, backend: str, *, device: str, caps: Capabilities,
                     openvino: bool, int8_ready: bool = False,
                     int8_reason: str = "no int8 graph", int8_refusal: str | None = None
                     ) -> PrecisionChoice:
    """The precision and backend for these settings on this hardware.

    Parameters
    ----------
    precision, backend : the settings (``auto`` or a value of each).
    device : the resolved device, ``cpu`` or ``cuda``.
    caps : the hardware report (tests pass a made-up one).
    openvino : whether the openvino package is installed.
    int8_ready, int8_reason : whether a current int8 graph of the model exists, and why not.
    int8_refusal : why ``auto`` avoids the (ready) int8 graph, from its measured error
        (:meth:`Int8Graph.auto_refusal`); ``None`` when it may take it.
    """
    if precision not in PRECISION_SETTINGS:
        raise PrecisionError(f"inference precision {precision!r}: use "
                             f"{', '.join(PRECISION_SETTINGS)}")
    if backend not in BACKEND_SETTINGS:
        raise PrecisionError(f"inference backend {backend!r}: use {', '.join(BACKEND_SETTINGS)}")
    if device != "cpu":
        return _cuda(precision, caps)
    if backend == "openvino" and not openvino:
        raise PrecisionError("TRIAGE_INFERENCE_BACKEND=openvino but the openvino package is "
                             "not installed: pip install -c constraints.txt openvino")
    use_openvino = backend == "openvino" or (backend == "auto" and openvino)
    if precision == "auto":
        return _auto_cpu(caps, use_openvino, int8_ready, int8_reason,
                         "OpenVINO not installed" if backend == "auto" else
                         "TRIAGE_INFERENCE_BACKEND=torch", int8_refusal)
    if precision == "int8":
        if not use_openvino:
            raise PrecisionError("int8 runs through OpenVINO: set TRIAGE_INFERENCE_BACKEND to "
                                 "auto or openvino and install openvino")
        if not int8_ready:
            raise PrecisionError(f"TRIAGE_INFERENCE_PRECISION=int8: {int8_reason}")
        if not caps.int8_dot:
            logger.warning("int8 on %s without VNNI/AMX: int8 gains less here; measure it with "
                           "bench/ensemble.py", caps.cpu_model)
        if int8_refusal is not None:
            logger.warning("TRIAGE_INFERENCE_PRECISION=int8 although %s; `auto` avoids int8 "
                           "here", int8_refusal)
    if precision == "bf16" and not caps.native_bf16:
        logger.warning("TRIAGE_INFERENCE_PRECISION=bf16 on %s, which has NO native bf16: torch "
                       "emulates it, about 7x slower than fp32 (PERF-NOTES, Zen 3), and "
                       "OpenVINO ignores the hint; use auto", caps.cpu_model)
    backend_used = "openvino" if use_openvino else "torch"
    source = f"TRIAGE_INFERENCE_PRECISION={precision}"
    if backend == "auto" and use_openvino:
        source += ", OpenVINO: faster than torch on every CPU measured"
    return PrecisionChoice(precision, backend_used, source)


def planned_device(setting: str, caps: Capabilities) -> str:
    """``TRIAGE_DEVICE`` as the loader will resolve it: ``auto`` is CUDA when a GPU exists."""
    if setting == "auto":
        return "cuda" if caps.gpu else "cpu"
    return setting


def plan(precision: str, backend: str, *, device: str, caps: Capabilities, cache_dir: Path,
         model_version: str, input_size: int, fold_hashes: Sequence[str], gated: bool
         ) -> tuple[PrecisionChoice, Int8Graph]:
    """The choice for one model (its int8 graph looked up in ``cache_dir``)."""
    graph = int8_graph(cache_dir, model_version, input_size, fold_hashes)
    choice = choose_precision(precision, backend, device=device, caps=caps,
                              openvino=openvino_installed(), int8_ready=graph.ready,
                              int8_reason=graph.reason, int8_refusal=graph.auto_refusal(gated))
    return choice, graph


def plan_from_manifest(manifest: dict[str, object], precision: str, backend: str, *,
                       device: str, caps: Capabilities, cache_dir: Path,
                       threads: int = 0) -> PrecisionChoice:
    """:func:`plan` from a raw ``ensemble.json`` (the model store's copy): no torch import.
    Where the loader times bf16 against fp32 (:mod:`worker.score.speed`), the rates it
    recorded decide, as they do for the loader."""
    from worker.score import speed

    folds = manifest.get("folds")
    hashes = [str(f.get("sha256", "")) for f in folds if isinstance(f, dict)] if isinstance(
        folds, list) else []
    size = manifest.get("input_size")
    version, input_size = str(manifest.get("model_version", "?")), size if isinstance(
        size, int) else 0
    choice, graph = plan(precision, backend, device=device, caps=caps, cache_dir=cache_dir,
                         model_version=version, input_size=input_size, fold_hashes=hashes,
                         gated=bool(manifest.get("ood_gate")))
    if not speed.worth_timing(precision, choice, caps, device):
        return choice
    timed = speed.cached_choice(choice, caps, cache_dir, version, input_size, threads, graph)
    if timed is None:
        return PrecisionChoice(choice.precision, choice.backend, f"{choice.reason}; "
                               f"{speed.untimed_note(choice)}")
    return timed


def describe_plan(model_dir: Path, precision: str, backend: str, *, device_setting: str,
                  caps: Capabilities, cache_dir: Path, threads: int = 0) -> str:
    """What the model in ``model_dir`` will run in here, and why (or why that is unknown)."""
    try:
        manifest = json.loads((model_dir / "ensemble.json").read_text(encoding="utf-8"))
        choice = plan_from_manifest(manifest, precision, backend,
                                    device=planned_device(device_setting, caps), caps=caps,
                                    cache_dir=cache_dir, threads=threads)
    except (OSError, ValueError, AttributeError) as exc:
        return f"unknown until the model loads ({model_dir}: {exc})"
    except PrecisionError as exc:
        return f"REFUSED: {exc}"
    return choice.describe()
