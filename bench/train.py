"""Training throughput of ResNet-50 on this machine: fp32 vs bf16 autocast, side by side.

Usage: ``python bench/train.py [--size 224] [--batch 32] [--iters 3] [--warmup 1] [--device cpu]``
Prints images/s for forward+backward+AdamW step with random weights and the bf16/fp32 ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine


def images_per_second(size: int, batch: int, iters: int, warmup: int, device: str,
                      bf16: bool) -> float:
    """Seconds-per-iteration measured after ``warmup`` untimed iterations."""
    torch.manual_seed(0)
    model = resnet50(weights=None, num_classes=2).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        ctx = (torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16
               else contextlib.nullcontext())
        with ctx:
            loss = loss_fn(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    """Parse flags, run both precisions, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    fp32 = images_per_second(args.size, args.batch, args.iters, args.warmup, args.device, False)
    bf16 = images_per_second(args.size, args.batch, args.iters, args.warmup, args.device, True)
    print(f"ResNet-50 training, batch {args.batch}, {args.size} px, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(describe_machine())
    print(f"iterations: {args.warmup} warm-up + {args.iters} timed")
    print("| precision | train img/s |")
    print("|---|---|")
    print(f"| fp32 | {fp32:.2f} |")
    print(f"| bf16 autocast | {bf16:.2f} |")
    print(f"bf16 / fp32 = {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
