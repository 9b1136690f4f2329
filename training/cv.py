"""Cross-validation: one ResNet-50 per fold, resumable, ending in an ensemble directory.

Each finished fold leaves ``fold_XX.safetensors`` and ``fold_XX.json`` (history, held-out
predictions). A re-run with the same settings and data skips those folds, so an interrupted
run resumes at the first unfinished fold.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.durable import replace_json
from common.threads import usable_cores
from training import engine
from training.data import (
    DEFAULT_CLASSES,
    CachedImages,
    Sample,
    check_class_counts,
    dataset_fingerprint,
    discover,
    limit_per_class,
    load_cache,
)
from training.errors import TrainingError
from training.folds import FOLDS_FILE, assign_folds, read_folds, write_folds
from training.model import build_resnet50, save_fold_model
from training.preprocessing import PreprocessConfig
from training.progress import TrainingProgress
from training.settings import TrainingSettings

log = logging.getLogger(__name__)
RUN_FILE = "run.json"


@dataclass
class FoldResult:
    """What a finished fold leaves behind (also stored as ``fold_XX.json``)."""

    index: int
    test_indices: list[int]
    probs: list[float]  # positive-class probability of each test image
    labels: list[int]
    history: list[dict[str, float]]
    time_s: float

    @staticmethod
    def path(out: Path, index: int) -> Path:
        return out / f"fold_{index:02d}.json"

    @staticmethod
    def weights(out: Path, index: int) -> Path:
        return out / f"fold_{index:02d}.safetensors"


@dataclass
class Prepared:
    """Data shared by all folds of a run."""

    samples: list[Sample]
    labels: np.ndarray  # class index per sample
    folds: np.ndarray
    images: torch.Tensor
    fingerprint: str
    config: PreprocessConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a fold trains the same way twice on one machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_run_file(out: Path, settings: TrainingSettings, fingerprint: str) -> None:
    """Refuse to mix folds from different settings or data in one directory."""
    config = settings.run_config()
    wanted: dict[str, Any] = {"config": config, "dataset_fingerprint": fingerprint}
    path = out / RUN_FILE
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            old = found.get("config", {})
            changed = sorted(k for k in config if old.get(k) != config[k])
            raise TrainingError(
                f"{out} holds a run with other settings or data (differs in "
                f"{changed or ['dataset']}); use a new --out directory or delete {out}"
            )
    else:
        path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def _fold_assignment(out: Path, samples: list[Sample], settings: TrainingSettings) -> np.ndarray:
    folds_path = out / FOLDS_FILE
    folds = assign_folds(samples, settings.folds, settings.seed)
    if folds_path.is_file():
        saved = read_folds(folds_path)
        current = [(str(s.path), s.label, int(f)) for s, f in zip(samples, folds, strict=True)]
        if saved != current:
            raise TrainingError(f"{folds_path} differs from this run's folds; use a new --out")
    else:
        write_folds(folds_path, samples, folds)
    return folds


def prepare(settings: TrainingSettings, progress: TrainingProgress) -> Prepared:
    """Find and check the data, fix the folds and decode every image once."""
    if settings.data is None:
        raise TrainingError("no training data given; pass --data DIR or set TRIAGE_TRAIN_DATA")
    samples = discover(settings.data, DEFAULT_CLASSES)
    samples = limit_per_class(samples, settings.limit, settings.seed)
    check_class_counts(samples, DEFAULT_CLASSES, settings.folds)
    settings.out.mkdir(parents=True, exist_ok=True)
    fingerprint = dataset_fingerprint(samples)
    _check_run_file(settings.out, settings, fingerprint)
    folds = _fold_assignment(settings.out, samples, settings)
    config = PreprocessConfig(size=settings.input_size)
    with progress.task("decoding images", len(samples)) as advance:
        images = load_cache(samples, config, advance)
    labels = np.array([DEFAULT_CLASSES.index(s.label) for s in samples])
    log.info("%d images (%s), %d folds", len(samples),
             ", ".join(f"{c}: {int((labels == i).sum())}" for i, c in enumerate(DEFAULT_CLASSES)),
             settings.folds)
    return Prepared(samples, labels, folds, images, fingerprint, config)


def _loaders(
    data: Prepared, index: int, settings: TrainingSettings
) -> tuple[DataLoader, DataLoader]:
    train_idx = np.flatnonzero(data.folds != index)
    test_idx = np.flatnonzero(data.folds == index)
    train_set = CachedImages(data.images[train_idx], data.labels[train_idx],
                             engine.TrainTransform(data.config))
    test_set = CachedImages(data.images[test_idx], data.labels[test_idx],
                            engine.EvalTransform(data.config))
    generator = torch.Generator().manual_seed(settings.seed + index)
    # A final batch of one breaks BatchNorm in training mode, so drop only that case.
    drop_last = len(train_set) % settings.batch_size == 1
    if len(train_set) < 2:
        raise TrainingError(f"fold {index} leaves {len(train_set)} training images; add images")
    train = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True,
                       drop_last=drop_last, num_workers=settings.num_workers, generator=generator)
    test = DataLoader(test_set, batch_size=settings.batch_size, num_workers=settings.num_workers)
    return train, test


def _class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights so the loss treats both classes equally."""
    counts = np.bincount(labels, minlength=len(DEFAULT_CLASSES)).astype(float)
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def train_fold(data: Prepared, index: int, settings: TrainingSettings,
               progress: TrainingProgress) -> FoldResult:
    """Train one fold from scratch and predict its held-out images."""
    seed_everything(settings.seed + index)
    device = engine.resolve_device(settings.device)
    amp = engine.resolve_amp(settings.precision, device)
    model = build_resnet50(len(DEFAULT_CLASSES), settings.weights).to(device)
    train, test = _loaders(data, index, settings)
    pretrained = settings.weights.lower() != "none"
    optimizer = engine.build_optimizer(
        model, lr=settings.lr, weight_decay=settings.weight_decay, mode=settings.mode,
        backbone_factor=settings.backbone_lr_factor if pretrained else 1.0)
    steps = settings.epochs * len(train)
    scheduler = engine.cosine_with_warmup(optimizer, steps, warmup_steps=min(len(train), steps))
    weights = _class_weights(data.labels[data.folds != index]).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    history, start = [], time.monotonic()
    for epoch in range(settings.epochs):
        with progress.epoch(index, settings.folds, epoch, settings.epochs, len(train)) as step:
            result = engine.train_one_epoch(model, train, optimizer=optimizer, scheduler=scheduler,
                                            loss_fn=loss_fn, device=device, amp=amp,
                                            frozen=settings.mode == "frozen", on_step=step)
        probs, labels = engine.predict(model, test, device=device, amp=amp)
        val_acc = float(np.mean(probs.argmax(1) == labels))
        history.append({"epoch": epoch + 1, "train_loss": result.loss,
                        "train_accuracy": result.accuracy,
                        "val_loss": engine.mean_loss(probs, labels), "val_accuracy": val_acc})
        log.info("fold %d/%d epoch %d/%d: loss %.4f acc %.3f | held-out loss %.4f acc %.3f",
                 index + 1, settings.folds, epoch + 1, settings.epochs, result.loss,
                 result.accuracy, history[-1]["val_loss"], val_acc)
    save_fold_model(model, FoldResult.weights(settings.out, index), {"fold": str(index)})
    positive = DEFAULT_CLASSES.index("covid")
    return FoldResult(index, np.flatnonzero(data.folds == index).tolist(),
                      probs[:, positive].tolist(), labels.tolist(), history,
                      time.monotonic() - start)


def load_fold_result(out: Path, index: int) -> FoldResult | None:
    """A finished fold's result, or ``None`` when it must be (re)trained."""
    path, weights = FoldResult.path(out, index), FoldResult.weights(out, index)
    if not (path.is_file() and weights.is_file()):
        return None
    return FoldResult(**json.loads(path.read_text(encoding="utf-8")))


def save_fold_result(out: Path, result: FoldResult) -> None:
    """Write ``fold_XX.json`` last, after the weights, so it marks the fold as finished."""
    path = FoldResult.path(out, result.index)
    replace_json(path, result.__dict__, indent=None)


def run_cross_validation(settings: TrainingSettings) -> tuple[Prepared, list[FoldResult]]:
    """Train every unfinished fold; returns the data and all fold results in order."""
    # one thread per usable core unless set (common.threads: with passive waits)
    torch.set_num_threads(settings.threads if settings.threads > 0 else usable_cores())
    log.info("torch intra-op threads: %d", torch.get_num_threads())
    device = engine.resolve_device(settings.device)
    amp = engine.resolve_amp(settings.precision, device)
    log.info("%s", engine.describe_precision(amp, settings.precision, device))
    progress = TrainingProgress()
    with progress:
        data = prepare(settings, progress)
        finished = {i: load_fold_result(settings.out, i) for i in range(settings.folds)}
        progress.start_run(settings.epochs * sum(r is None for r in finished.values()))
        results: list[FoldResult] = []
        for index in range(settings.folds):
            done = finished[index]
            if done is not None:
                log.info("fold %d/%d already trained, skipping (resume)", index + 1, settings.folds)
                results.append(done)
                continue
            result = train_fold(data, index, settings, progress)
            save_fold_result(settings.out, result)
            results.append(result)
    return data, results


def run_summary(settings: TrainingSettings, results: list[FoldResult]) -> dict[str, Any]:
    """The ``training`` block of ``ensemble.json``."""
    return {
        "folds": settings.folds, "epochs": settings.epochs, "lr": settings.lr,
        "weight_decay": settings.weight_decay, "batch_size": settings.batch_size,
        "backbone_lr_factor": settings.backbone_lr_factor, "mode": settings.mode,
        "weights": settings.weights, "device": str(engine.resolve_device(settings.device)),
        "precision": settings.precision, "optimizer": "AdamW, cosine with 1-epoch warm-up",
        "time_s": round(sum(r.time_s for r in results), 1), "limit": settings.limit,
    }
