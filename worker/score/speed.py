"""The fastest exact path, timed where the flags can't tell: once per machine and model.

Native bf16 is not always faster than fp32. On Zen 4 (AVX512-BF16, no AMX) OpenVINO bf16 ran
at 1.8x its fp32; on a 2-core Intel Xeon whose hypervisor hides AMX (AVX512-BF16 left) it ran
slower than fp32 (docs/benchmarks.md). Both are exact with the fp32 re-check, so speed alone
decides: where ``auto`` picked bf16 on a CPU without AMX, the loader times the two.

int8 is not always the fastest exact path either: its re-check margins are wider than bf16's,
and every re-checked image costs the fp32 rate. On one AMX Xeon OpenVINO bf16 ran at 13.7
img/s and int8 at 15.1, but int8 re-scored 8.7 % of images against bf16's 4.9 %, so bf16 was
faster with its re-checks. Where ``auto`` picked int8, the loader times int8, bf16 (native
only), OpenVINO fp32 and the fp32 reference, and keeps the path with the best effective rate,
``1 / (1 / rate + share / reference rate)``, the shares being those the int8 build measured on
its check images (its own margins for int8, the default margins for the others).

Timing: one batch per path, interleaved rounds after a warm-up (pixel values do not change the
speed). The rates are cached per CPU, flags, backend, threads, model version and input size in
``TRIAGE_OPENVINO_CACHE_DIR``, so only the first start of a worker on a machine pays for it
(about half a minute for ten folds at 224 px, a minute with int8).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from common.durable import replace_json
from common.hardware import Capabilities
from worker.score.precision import INT8, Int8Graph, PrecisionChoice

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
BATCH = 8  # the default TRIAGE_SCORE_BATCH, the CPU sweet spot (PERF-NOTES)
ROUNDS = 2
REFERENCE = "reference"  # the fp32 torch models every fast path re-checks with


def worth_timing(setting: str, choice: PrecisionChoice, caps: Capabilities,
                 device: str) -> bool:
    """``auto`` chose int8, or bf16 on a CPU whose bf16 has no AMX behind it."""
    return setting == "auto" and device == "cpu" and (
        choice.precision == INT8 or (choice.precision == "bf16" and not caps.amx))


def candidates(choice: PrecisionChoice, caps: Capabilities) -> tuple[str, ...]:
    """The paths timed against each other for ``choice``."""
    if choice.precision == INT8:
        return (INT8, *(("bf16",) if caps.native_bf16 else ()), "fp32", REFERENCE)
    return ("bf16", "fp32")


def untimed_note(choice: PrecisionChoice) -> str:
    """What the first start will do, for ``model list`` before it has."""
    if choice.precision == INT8:
        return ("int8, bf16 and fp32 are timed at the first start and the fastest with its "
                "re-checks is kept")
    return "bf16 without AMX: bf16 and fp32 are timed at the first start and the faster is kept"


def shares(graph: Int8Graph) -> dict[str, float]:
    """Per path, the share of images its re-check margins send to fp32, as the int8 build
    measured them (the others' default margins: int8's share when unrecorded)."""
    if graph.error is None:
        return {}
    default = graph.error.default_share
    other = graph.error.rescore_share if default is None else default
    return {INT8: graph.error.rescore_share, "bf16": other, "fp32": other}


def cache_key(caps: Capabilities, backend: str, threads: int) -> str:
    return f"{caps.cpu_model}|{'/'.join(sorted(caps.flags))}|{backend}|threads={threads}"


def cache_file(cache_dir: Path, model_version: str, size: int) -> Path:
    return cache_dir / f"{model_version}-{size}-speed.json"


def cached_rates(path: Path, key: str, names: tuple[str, ...] = ("bf16", "fp32")
                 ) -> dict[str, float] | None:
    """The rates of ``names`` measured before on this machine, if all were."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict):
        return None
    try:
        return {name: float(entry[name]) for name in names}
    except (KeyError, TypeError, ValueError):
        return None


def store_rates(path: Path, key: str, rates: Mapping[str, float]) -> None:
    """Add this machine's rates to the cache file, atomically."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data[key] = {**rates,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_json(path, data)


def cached_choice(choice: PrecisionChoice, caps: Capabilities, cache_dir: Path,
                  model_version: str, size: int, threads: int, graph: Int8Graph
                  ) -> PrecisionChoice | None:
    """The fastest path as timed before on this machine; ``None`` when untimed."""
    rates = cached_rates(cache_file(cache_dir, model_version, size),
                         cache_key(caps, choice.backend, threads), candidates(choice, caps))
    return None if rates is None else decided(choice, rates, shares(graph))


def measure(runners: Mapping[str, Callable[[torch.Tensor], object]], size: int,
            rounds: int = ROUNDS) -> dict[str, float]:
    """Images/s of each runner on one batch: a warm-up each, then interleaved timed rounds."""
    import torch

    batch = torch.zeros(BATCH, 3, size, size)
    seconds = dict.fromkeys(runners, 0.0)
    with torch.inference_mode():
        for run in runners.values():
            run(batch)
        for _ in range(rounds):
            for name, run in runners.items():
                started = time.perf_counter()
                run(batch)
                seconds[name] += time.perf_counter() - started
    # rounded as the cache stores them, so the loader and `model list` state the same rates
    return {name: round(rounds * BATCH / max(spent, 1e-9), 3) for name, spent in seconds.items()}


def decided(choice: PrecisionChoice, rates: Mapping[str, float],
            rescored: Mapping[str, float] | None = None) -> PrecisionChoice:
    """The fastest path on ``choice``'s backend, the rates in its reason: with int8 among
    ``rates``, by effective rate (``rescored``: each path's share re-checked in fp32)."""
    if INT8 in rates:
        return _fastest_exact(choice, rates, rescored or {})
    faster = "fp32" if rates["fp32"] > rates["bf16"] else "bf16"
    measured = (f"measured here at {rates['bf16']:.2f} img/s in bf16 against "
                f"{rates['fp32']:.2f} in fp32 ({choice.backend}, batch {BATCH})")
    if faster == "bf16":
        return PrecisionChoice("bf16", choice.backend, f"{choice.reason}; {measured}")
    return PrecisionChoice("fp32", choice.backend, f"auto: native bf16 without AMX is slower "
                           f"than fp32 on this CPU: {measured}")


def _fastest_exact(choice: PrecisionChoice, rates: Mapping[str, float],
                   rescored: Mapping[str, float]) -> PrecisionChoice:
    reference = rates[REFERENCE]
    effective = {name: 1.0 / (1.0 / max(rate, 1e-9) + rescored.get(name, 0.0) / reference)
                 for name, rate in rates.items() if name != REFERENCE}
    best = max(effective, key=lambda name: effective[name])
    measured = "; ".join(f"{name} {effective[name]:.2f} img/s with its re-checks ({rates[name]:.2f}"
                         f" raw, {rescored.get(name, 0.0):.0%} re-scored)"
                         for name in sorted(effective, key=lambda n: -effective[n]))
    return PrecisionChoice(best, choice.backend, f"auto: fastest exact path measured here "
                           f"({choice.backend}, batch {BATCH}, fp32 re-check at "
                           f"{reference:.2f} img/s): {measured}")
