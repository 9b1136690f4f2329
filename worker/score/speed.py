"""bf16 or fp32: where native bf16 comes without AMX, time both once and keep the faster.

Native bf16 is not always faster than fp32. On Zen 4 (AVX512-BF16, no AMX) OpenVINO bf16 ran
at 1.8x its fp32; on a 2-core Intel Xeon whose hypervisor hides AMX (AVX512-BF16 left) it ran
slower than fp32 (docs/benchmarks.md). Both are exact with the fp32 re-check, so speed alone
decides. Where ``auto`` picked bf16 on a CPU without AMX, the loader times the two paths on
one batch (interleaved rounds after a warm-up; pixel values do not change the speed) and keeps
the faster. The rates are cached per CPU, flags, backend, threads, model version and input
size in ``TRIAGE_OPENVINO_CACHE_DIR``, so only the first start of a worker on a machine pays
for it (about half a minute for ten folds at 224 px).
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
from worker.score.precision import PrecisionChoice

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
BATCH = 8  # the default TRIAGE_SCORE_BATCH, the CPU sweet spot (PERF-NOTES)
ROUNDS = 2


def worth_timing(setting: str, choice: PrecisionChoice, caps: Capabilities,
                 device: str) -> bool:
    """``auto`` chose bf16 on a CPU whose bf16 has no AMX behind it."""
    return (setting == "auto" and device == "cpu" and choice.precision == "bf16"
            and not caps.amx)


def cache_key(caps: Capabilities, backend: str, threads: int) -> str:
    return f"{caps.cpu_model}|{'/'.join(sorted(caps.flags))}|{backend}|threads={threads}"


def cache_file(cache_dir: Path, model_version: str, size: int) -> Path:
    return cache_dir / f"{model_version}-{size}-speed.json"


def cached_rates(path: Path, key: str) -> dict[str, float] | None:
    """The rates measured before on this machine, if any."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict):
        return None
    try:
        return {"bf16": float(entry["bf16"]), "fp32": float(entry["fp32"])}
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
                  model_version: str, size: int, threads: int) -> PrecisionChoice | None:
    """The faster of bf16 and fp32 as timed before on this machine; ``None`` when untimed."""
    rates = cached_rates(cache_file(cache_dir, model_version, size),
                         cache_key(caps, choice.backend, threads))
    return None if rates is None else decided(choice, rates)


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


def decided(choice: PrecisionChoice, rates: Mapping[str, float]) -> PrecisionChoice:
    """The faster of bf16 and fp32 on ``choice``'s backend, the rates in its reason."""
    faster = "fp32" if rates["fp32"] > rates["bf16"] else "bf16"
    measured = (f"measured here at {rates['bf16']:.2f} img/s in bf16 against "
                f"{rates['fp32']:.2f} in fp32 ({choice.backend}, batch {BATCH})")
    if faster == "bf16":
        return PrecisionChoice("bf16", choice.backend, f"{choice.reason}; {measured}")
    return PrecisionChoice("fp32", choice.backend, f"auto: native bf16 without AMX is slower "
                           f"than fp32 on this CPU: {measured}")
