"""What the machine can run fast: CPU instruction sets and the GPU, detected once.

The worker (``auto`` inference precision), the trainer (``--precision auto``) and every
benchmark read one :class:`Capabilities` report. Tests build a report by hand and pass it in,
so a choice can be checked for CPUs this machine is not.

The CPU flags come from ``/proc/cpuinfo`` (Linux); torch's own view of the CPU
(``torch.backends.cpu.get_cpu_capability()``) and the CUDA device come from torch, imported
only when :func:`detect` runs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/gpus")
# The flags that decide the speed of inference and training, in the order they are shown.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
                  "amx_int8", "amx_tile")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # native bf16 dot products
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # int8 dot products (VNNI/AMX)


@dataclass(frozen=True)
class Capabilities:
    """One machine's report.

    Attributes
    ----------
    cpu_model : the ``model name`` line of ``/proc/cpuinfo``.
    cores : CPUs this process may run on.
    flags : the :data:`RELEVANT_FLAGS` the CPU has.
    torch_isa : ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``, ...), or
        empty when not asked.
    gpu : the CUDA device's name, or empty without one.
    gpu_capability : its compute capability, ``(0, 0)`` without one.
    gpu_bf16 : whether the CUDA device computes in bf16 natively.
    """

    cpu_model: str = "unknown CPU"
    cores: int = 1
    flags: frozenset[str] = field(default_factory=frozenset)
    torch_isa: str = ""
    gpu: str = ""
    gpu_capability: tuple[int, int] = (0, 0)
    gpu_bf16: bool = False

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 runs in hardware (AVX512-BF16 or AMX-BF16); elsewhere torch emulates it,
        about 7x slower than fp32 (PERF-NOTES, Zen 3)."""
        return bool(self.flags & BF16_FLAGS)

    @property
    def int8_dot(self) -> bool:
        """int8 dot products in hardware (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
        return bool(self.flags & INT8_FLAGS)

    @property
    def amx(self) -> bool:
        return any(f.startswith("amx") for f in self.flags)

    @property
    def kind(self) -> str:
        """A short name of the CPU class, as docs/benchmarks.md groups its tables."""
        if self.amx:
            return "AMX"
        if self.avx512 and self.native_bf16 and self.int8_dot:
            return "AVX-512 BF16/VNNI"
        if self.avx512:
            return "AVX-512"
        return "AVX2" if self.avx2 else "no AVX2"

    def describe(self) -> str:
        """One line for logs and benchmark output."""
        shown = [f for f in RELEVANT_FLAGS if f in self.flags]
        cpu = (f"CPU {self.cpu_model} ({self.kind}; {self.cores} cores; flags "
               f"{' '.join(shown) or 'none of ' + '/'.join(RELEVANT_FLAGS[:2])}"
               + (f"; torch ISA {self.torch_isa}" if self.torch_isa else "") + ")")
        if self.gpu:
            major, minor = self.gpu_capability
            cpu += (f"; GPU {self.gpu} (compute {major}.{minor}, "
                    f"bf16 {'native' if self.gpu_bf16 else 'no'})")
        return cpu


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, relevant flags) of the first processor in ``/proc/cpuinfo`` text."""
    name, flags = "unknown CPU", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip() or name
        elif key == "flags" and not flags:
            flags = frozenset(value.split()) & frozenset(RELEVANT_FLAGS)
    return name, flags


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _torch_facts() -> tuple[str, str, tuple[int, int], bool]:
    """(torch CPU ISA, GPU name, compute capability, GPU bf16) from torch."""
    import torch

    isa = str(torch.backends.cpu.get_cpu_capability())
    if not torch.cuda.is_available():
        return isa, "", (0, 0), False
    major, minor = torch.cuda.get_device_capability(0)
    return (isa, torch.cuda.get_device_name(0), (major, minor),
            bool(torch.cuda.is_bf16_supported()))


@functools.lru_cache(maxsize=2)
def detect(*, light: bool = False) -> Capabilities:
    """This machine's report (cached: the hardware does not change while a process runs).

    ``light`` skips importing torch (about a second) unless an NVIDIA driver is loaded: the
    CPU flags alone decide a CPU's choice (``cxr-triage model list``).
    """
    text = CPUINFO.read_text(encoding="utf-8", errors="replace") if CPUINFO.is_file() else ""
    name, flags = parse_cpuinfo(text)
    if light and not NVIDIA_DRIVER.is_dir():
        return Capabilities(name, _cores(), flags)
    isa, gpu, capability, gpu_bf16 = _torch_facts()
    return Capabilities(name, _cores(), flags, isa, gpu, capability, gpu_bf16)
