"""One fold's building blocks: transforms, optimiser, ``train_one_epoch`` and ``predict``."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from common.hardware import Capabilities, detect
from training.errors import TrainingError
from training.preprocessing import PreprocessConfig, normalize_unit

log = logging.getLogger(__name__)
StepCallback = Callable[[float, float], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def resolve_amp(precision: str, device: torch.device,
                capabilities: Capabilities | None = None) -> torch.dtype | None:
    """The autocast dtype: ``auto`` takes bf16 only where the hardware computes it natively
    (a CUDA device with bf16, or a CPU with AVX512-BF16/AMX: 2.2x fp32 in bench/train.py) and
    fp32 elsewhere (emulated bf16 ran one epoch in 11 min against 45 s in fp32 on Zen 3).
    An explicit ``bf16`` is honoured, with a warning where it is emulated."""
    caps = capabilities if capabilities is not None else detect()
    native = caps.gpu_bf16 if device.type == "cuda" else caps.native_bf16
    if precision == "bf16":
        if not native:
            _warn_emulated_bf16(device.type, caps.gpu if device.type == "cuda" else caps.cpu_model)
        return torch.bfloat16
    if precision == "auto" and native:
        return torch.bfloat16
    return None


@functools.lru_cache(maxsize=4)
def _warn_emulated_bf16(device_type: str, hardware: str) -> None:
    """Once per process: every fold resolves the precision again."""
    log.warning("--precision bf16 on %s %s, which has NO native bf16: torch emulates it, many "
                "times slower than fp32 (PERF-NOTES: one epoch took 11 min against 45 s in "
                "fp32 on Zen 3). Use --precision auto (fp32 here) unless you mean it.",
                device_type.upper(), hardware)


def describe_precision(amp: torch.dtype | None, precision: str, device: torch.device,
                       capabilities: Capabilities | None = None) -> str:
    """One log line: the hardware and the training precision chosen, with the reason."""
    caps = capabilities if capabilities is not None else detect()
    chosen = "bf16 autocast" if amp is torch.bfloat16 else "fp32"
    if precision != "auto":
        reason = f"--precision {precision}"
    elif amp is torch.bfloat16:
        reason = "auto: native bf16 on this " + ("GPU" if device.type == "cuda" else "CPU")
    else:
        reason = "auto: no native bf16 on this " + ("GPU" if device.type == "cuda" else "CPU")
    return f"{caps.describe()}; training precision {chosen} ({reason})"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class EvalTransform:
    """Cached unit image (1, S, S) to model tensor: exactly what ``to_model_tensor`` does.

    A class rather than a closure so DataLoader workers can pickle it on any platform.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, unit: torch.Tensor) -> torch.Tensor:
        return normalize_unit(unit, mean=self.config.mean, std=self.config.std)


class TrainTransform(EvalTransform):
    """Mild geometric and exposure changes a radiograph plausibly has, then normalisation.

    No horizontal flip: the heart is on the left, and a flipped film is a different (rare)
    anatomy. Rotation stays small because radiographs are taken upright.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        super().__init__(config)
        self.augment = v2.Compose([
            v2.RandomAffine(degrees=7.0, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ])

    def __call__(self, unit: torch.Tensor) -> torch.Tensor:
        return super().__call__(self.augment(unit).clamp(0.0, 1.0))


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_factor: float, mode: str
) -> torch.optim.Optimizer:
    """AdamW with the head at ``lr`` and the backbone at ``lr * backbone_factor``.

    ``frozen`` mode sets ``requires_grad=False`` on the backbone and optimises only the head.
    """
    head = list(model.fc.parameters())  # type: ignore[union-attr]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    if mode == "frozen":
        for p in backbone:
            p.requires_grad_(False)
        return torch.optim.AdamW(head, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(
        [{"params": backbone, "lr": lr * backbone_factor}, {"params": head, "lr": lr}],
        weight_decay=weight_decay,
    )


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero, stepped per batch."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochResult:
    """Mean loss and accuracy over one pass."""

    loss: float
    accuracy: float


def _set_train_mode(model: nn.Module, frozen: bool) -> None:
    model.train()
    if frozen:
        # A frozen backbone keeps its BatchNorm statistics too, or "frozen" still drifts.
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d) and not name.startswith("fc"):
                module.eval()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    amp: torch.dtype | None,
    frozen: bool = False,
    on_step: StepCallback | None = None,
) -> EpochResult:
    """One pass over ``loader``; ``on_step(loss, accuracy)`` reports running means."""
    _set_train_mode(model, frozen)
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        with autocast(device, amp):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if on_step is not None:
            on_step(total_loss / seen, correct / seen)
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1))


def predict(
    model: nn.Module, loader: DataLoader, *, device: torch.device, amp: torch.dtype | None
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, classes) and labels (N,) in loader order."""
    model.eval()
    probs, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in loader:
            with autocast(device, amp):
                logits = model(images.to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(batch_labels.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def mean_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of already-softmaxed probabilities."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
