"""The machine a benchmark ran on, printed with every figure (issue 16, item 7).

One line: the CPU model, its class (AVX2, AVX-512 BF16/VNNI, AMX), the flags that decide
inference and training speed, the cores, torch's view of the ISA, the GPU if any, and the load
average when the run started (2-core machines are often shared; a figure under load says so).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.hardware import Capabilities, detect


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def describe_machine(*, torch_facts: bool = True) -> str:
    """``machine: CPU ... (kind; cores; flags ...); load average ...`` for benchmark output.

    ``torch_facts`` False keeps torch out of benchmarks that don't import it.
    """
    caps: Capabilities = detect(light=not torch_facts)
    return f"machine: {caps.describe()}; {load_average()}"


def cpu_kind() -> str:
    """The CPU class docs/benchmarks.md groups its tables by."""
    return detect(light=True).kind
