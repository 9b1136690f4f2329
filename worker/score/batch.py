"""Scoring for re-scoring runs: decode in parallel (a torch DataLoader), predict, record.

Decoding and preprocessing run in DataLoader worker processes with training's own
``preprocess`` and the manifest's :class:`PreprocessConfig` (never the models), so the next
batches are decoded while the ensemble runs on the current one. Scores are recorded with
``db.scores.record_score`` (once per instance, model version and content, as the worker
does) and decisions with ``worker.score.decision``; an image that can't be decoded is recorded in
``rescore_failure`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from sqlalchemy.orm import Session, sessionmaker
from torch.utils.data import DataLoader, Dataset

from db.models import utcnow
from db.runs import record_failure
from db.scores import record_score
from training.preprocessing import PreprocessConfig, preprocess
from worker.score.decision import decide, fold_votes
from worker.score.ensemble import BatchPrediction

logger = logging.getLogger(__name__)


class BatchModel(Protocol):
    """What scoring needs of an ensemble (``worker.score.ensemble.Ensemble`` is one)."""

    device: str
    config: PreprocessConfig

    @property
    def model_version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def predict(self, batch: torch.Tensor) -> BatchPrediction: ...


@dataclass(frozen=True)
class ImageRef:
    """One instance to score: its id, file and the content hash the score is recorded for."""

    instance_id: int
    file_path: str
    content_sha256: str


@dataclass(frozen=True)
class Decoded:
    """One image after preprocessing: its tensor, or why there is none."""

    ref: ImageRef
    tensor: torch.Tensor | None
    error: str | None
    decode_ms: float


@dataclass(frozen=True)
class DecodedBatch:
    """The decoded images of one batch stacked into one tensor, and the failures."""

    refs: tuple[ImageRef, ...]
    tensors: torch.Tensor | None
    decode_ms: tuple[float, ...]
    failures: tuple[tuple[ImageRef, str], ...]

    def __len__(self) -> int:
        return len(self.refs) + len(self.failures)


@dataclass(frozen=True)
class ScoringContext:
    """Where a batch's results are recorded, and with which rule."""

    run_id: int | None
    indeterminate_std: float
    worker_host: str


def decode(ref: ImageRef, config: PreprocessConfig) -> Decoded:
    """Preprocess one file; any decoder error becomes a reason, never an exception."""
    started = time.monotonic()
    try:
        tensor = preprocess(Path(ref.file_path), config)
    except Exception as exc:  # any decoder or I/O error: recorded with its reason
        return Decoded(ref, None, f"cannot decode: {type(exc).__name__}: {exc}",
                       (time.monotonic() - started) * 1000)
    return Decoded(ref, tensor, None, (time.monotonic() - started) * 1000)


def collate(items: Sequence[Decoded]) -> DecodedBatch:
    """Stack the decoded tensors (in the loader process: one shared-memory transfer)."""
    good = [item for item in items if item.tensor is not None]
    return DecodedBatch(
        refs=tuple(item.ref for item in good),
        tensors=torch.stack([item.tensor for item in good if item.tensor is not None])
        if good else None,
        decode_ms=tuple(item.decode_ms for item in good),
        failures=tuple((item.ref, item.error or "cannot decode") for item in items
                       if item.tensor is None),
    )


class RescoreDataset(Dataset[Decoded]):
    """The images of a run; ``__getitem__`` decodes and preprocesses one of them."""

    def __init__(self, refs: Sequence[ImageRef], config: PreprocessConfig) -> None:
        self.refs = list(refs)
        self.config = config

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Decoded:
        return decode(self.refs[index], self.config)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is per process; leave the cores to the model


def make_loader(refs: Sequence[ImageRef], config: PreprocessConfig, *, batch_size: int,
                workers: int, pin_memory: bool = False) -> DataLoader[Decoded]:
    """Batches of decoded images in order, ``workers`` processes decoding ahead."""
    return DataLoader(
        RescoreDataset(refs, config), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None, persistent_workers=False,
    )


def decode_batch(refs: Sequence[ImageRef], config: PreprocessConfig) -> DecodedBatch:
    """Decode in this process (the distributed task's path)."""
    return collate([decode(ref, config) for ref in refs])


def score_batch(sessions: sessionmaker[Session], model: BatchModel, batch: DecodedBatch,
                context: ScoringContext) -> tuple[int, int]:
    """Predict a decoded batch and record scores and failures in one transaction.

    Returns (scores newly written, failures recorded). A prediction error propagates: nothing
    of the batch is recorded, so the next run scores it again.
    """
    prediction, infer_ms = None, 0.0
    if batch.tensors is not None:
        started = time.monotonic()
        prediction = model.predict(batch.tensors)
        infer_ms = (time.monotonic() - started) * 1000
    written = 0
    threshold, version = model.threshold, model.model_version
    with sessions.begin() as session:
        for index, ref in enumerate(batch.refs):
            assert prediction is not None
            mean, std = prediction.mean[index], prediction.std[index]
            folds = prediction.folds[index]
            decision = decide(mean, std, threshold=threshold,
                              indeterminate_std=context.indeterminate_std)
            written += record_score(session, {
                "instance_id": ref.instance_id, "model_version": version,
                "content_sha256": ref.content_sha256, "probability_mean": mean,
                "probability_std": std, "fold_probabilities": list(folds),
                "fold_votes": fold_votes(folds, threshold), "threshold": threshold,
                "decision": decision.value,
                "latency_ms": round(batch.decode_ms[index] + infer_ms / len(batch.refs), 3),
                "batch_size": len(batch.refs), "device": model.device,
                "worker_host": context.worker_host, "created_at": utcnow(),
            })
        for ref, reason in batch.failures:
            record_failure(session, context.run_id, ref.instance_id, version,
                           ref.content_sha256, reason)
            logger.warning("instance %d: %s", ref.instance_id, reason)
    return written, len(batch.failures)
