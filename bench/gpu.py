"""The fold ensemble on a CUDA GPU: images/s per precision, memory layout, batch and compilation,
and how many decoding processes would have to feed it.

For each of fp16 and bf16, contiguous and channels_last, batch 32 to 256, it times the
ensemble's forward pass (``--folds`` random-weight ResNet-50s, softmax averaged, as the worker
runs them) after warm-up, eager and, with channels_last, through ``torch.compile`` (default
mode) and with CUDA graphs (``mode="reduce-overhead"``). Model building and compilation are
excluded from the rates (they happen in the warm-up). It also decodes the shared DICOM files
on this machine's CPU in one process with the worker's preprocessing, and prints per row how
many such processes the rate needs. A row that would end past ``--budget-s`` is skipped and
said so, so the script fits a lent GPU's few minutes.

Run on a lent GPU: ``bash bench/gpu_check.sh`` (this script, then ``bench/train.py --device
cuda``). ``--device cpu --folds 1 --size 64 --batches 2`` checks the script anywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from training.preprocessing import PreprocessConfig, preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def folds(count: int, device: str, dtype: torch.dtype, channels_last: bool) -> list[nn.Module]:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return [resnet50(num_classes=2).eval().to(device, dtype=dtype, memory_format=layout)
            for _ in range(count)]


def ensemble(models: list[nn.Module], compile_mode: str | None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 3, H, W) -> (B,) mean positive-class probability over the folds."""
    runs = [m if compile_mode is None else torch.compile(m, mode=compile_mode) for m in models]

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(r(x).float(), dim=1)[:, 1] for r in runs]).mean(0)

    return run


def rate(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, device: str,
         warmup: int, iters: int) -> float:
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(warmup):
            run(batch)
        sync()
        started = time.perf_counter()
        for _ in range(iters):
            run(batch)
        sync()
    return iters * batch.shape[0] / (time.perf_counter() - started)


def decode_rate(size: int) -> float:
    """Images/s one process decodes and preprocesses (the shared DICOMs, one torch thread)."""
    files = sorted((SHARED / "dicom").glob("*.dcm"))
    if not files:
        return 0.0
    torch.set_num_threads(1)
    config = PreprocessConfig(size=size)
    done, started = 0, time.perf_counter()
    for path in files * 2:
        try:
            preprocess(path, config)
            done += 1
        except Exception:  # a file this decoder can't read is not a rate
            continue
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=240.0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: run this on a machine with a GPU (or --device cpu)")
        return 2
    started = time.monotonic()
    print(describe_machine())
    if args.device == "cuda":
        print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}")
    per_process = decode_rate(args.size)
    print(f"decoding: {per_process:.1f} img/s per process (shared DICOMs, {args.size} px)")
    print(f"{'precision':9s} {'layout':14s} {'batch':>5s} {'mode':15s} {'img/s':>9s} "
          f"{'decoders needed':>15s}")
    batches = [int(b) for b in args.batches.split(",")]
    for name, dtype in DTYPES.items():
        for channels_last in (False, True):
            models = folds(args.folds, args.device, dtype, channels_last)
            modes: list[str | None] = [None] + (
                ["default", "reduce-overhead"] if channels_last else [])
            for mode in modes:
                for size in batches:
                    label = (f"{name:9s} {'channels_last' if channels_last else 'contiguous':14s}"
                             f" {size:5d} {mode or 'eager':15s}")
                    if time.monotonic() - started > args.budget_s:
                        print(f"{label} skipped (over --budget-s {args.budget_s:.0f})")
                        continue
                    x = torch.randn(size, 3, args.size, args.size, device=args.device,
                                    dtype=dtype).contiguous(memory_format=torch.channels_last
                                                            if channels_last else
                                                            torch.contiguous_format)
                    try:
                        value = rate(ensemble(models, mode), x, args.device, 3, args.iters)
                    except Exception as exc:  # a compile mode this build lacks: say so, go on
                        print(f"{label} failed: {type(exc).__name__}: {str(exc)[:80]}")
                        continue
                    needed = value / per_process if per_process else float("nan")
                    print(f"{label} {value:9.1f} {needed:15.1f}", flush=True)
            del models
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
