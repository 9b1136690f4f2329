"""The one scoring path: decode, predict, record (live scoring and both re-scoring paths).

``decode`` preprocesses one image with training's code path and turns any decoder error into
a reason, never an exception; ``collate``/``decode_batch`` stack a batch; ``predict_batch`` runs
the ensemble once on it; ``record_batch`` writes one ``score`` row per image with
``db.scores.record_score`` (once per instance, model version and content) and its
``worker.score.decision`` decision, and hands each image that could not be decoded to the
context's :class:`FailureSink`: the live path marks the instance ``failed``
(:func:`mark_instance_failed`), re-scoring records it in ``rescore_failure`` with the run id
(:class:`RunFailures`). ``score_batch`` is predict then record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from sqlalchemy.orm import Session, sessionmaker

from db.runs import record_failure
from db.scores import NewScore, mark_failed, record_score
from worker.score.cam import as_rows
from worker.score.decision import NOT_ASSESSABLE_TEXT, Decision, decide, fold_votes
from worker.score.ensemble import BatchPrediction

logger = logging.getLogger(__name__)

Preprocess = Callable[[Path], torch.Tensor]


class BatchModel(Protocol):
    """What scoring needs of an ensemble (``worker.score.ensemble.Ensemble`` is one)."""

    device: str

    @property
    def model_version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def preprocess(self, path: Path) -> torch.Tensor: ...

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
class Predicted:
    """A decoded batch and the ensemble's output for its images (``None``: none decoded)."""

    batch: DecodedBatch
    prediction: BatchPrediction | None
    infer_ms: float


class FailureSink(Protocol):
    """Records that an image could not be scored, inside the batch's transaction."""

    def __call__(self, session: Session, ref: ImageRef, model_version: str,
                 reason: str) -> None: ...


def mark_instance_failed(session: Session, ref: ImageRef, model_version: str,
                         reason: str) -> None:
    """Live scoring: the instance itself becomes ``failed`` with the reason."""
    mark_failed(session, ref.instance_id, ref.content_sha256, reason)


@dataclass(frozen=True)
class RunFailures:
    """Re-scoring: the failure is kept in ``rescore_failure`` for the run (the instance's own
    status is not touched)."""

    run_id: int | None

    def __call__(self, session: Session, ref: ImageRef, model_version: str,
                 reason: str) -> None:
        record_failure(session, self.run_id, ref.instance_id, model_version,
                       ref.content_sha256, reason)


@dataclass(frozen=True)
class ScoringContext:
    """How a batch's results are decided and recorded."""

    indeterminate_std: float
    worker_host: str
    on_failure: FailureSink


@dataclass(frozen=True)
class ScoredImage:
    """One recorded image: its decision, and whether the score row is new."""

    instance_id: int
    mean: float
    std: float
    decision: Decision
    inserted: bool


@dataclass(frozen=True)
class BatchOutcome:
    """What recording a batch did."""

    scores: tuple[ScoredImage, ...] = ()
    failed: tuple[int, ...] = ()

    @property
    def written(self) -> tuple[int, ...]:
        """The instances whose score row this batch wrote (not a duplicate's)."""
        return tuple(s.instance_id for s in self.scores if s.inserted)


def decode(ref: ImageRef, preprocess: Preprocess) -> Decoded:
    """Preprocess one file; any decoder error becomes a reason, never an exception."""
    started = time.monotonic()
    try:
        tensor = preprocess(Path(ref.file_path))
    except Exception as exc:  # any decoder or I/O error: recorded with its reason
        return Decoded(ref, None, f"cannot decode: {type(exc).__name__}: {exc}",
                       (time.monotonic() - started) * 1000)
    return Decoded(ref, tensor, None, (time.monotonic() - started) * 1000)


def collate(items: Sequence[Decoded]) -> DecodedBatch:
    """Stack the decoded tensors (in a loader process: one shared-memory transfer)."""
    good = [item for item in items if item.tensor is not None]
    return DecodedBatch(
        refs=tuple(item.ref for item in good),
        tensors=torch.stack([item.tensor for item in good if item.tensor is not None])
        if good else None,
        decode_ms=tuple(item.decode_ms for item in good),
        failures=tuple((item.ref, item.error or "cannot decode") for item in items
                       if item.tensor is None),
    )


def decode_batch(refs: Sequence[ImageRef], preprocess: Preprocess) -> DecodedBatch:
    """Decode in this process (live scoring and the distributed re-scoring task)."""
    return collate([decode(ref, preprocess) for ref in refs])


def predict_batch(model: BatchModel, batch: DecodedBatch) -> Predicted:
    """Run the ensemble once on the decoded images; errors propagate (nothing is recorded)."""
    if batch.tensors is None:
        return Predicted(batch, None, 0.0)
    started = time.monotonic()
    prediction = model.predict(batch.tensors)
    return Predicted(batch, prediction, (time.monotonic() - started) * 1000)


def _new_score(model: BatchModel, predicted: Predicted, index: int,
               context: ScoringContext) -> NewScore:
    batch, prediction = predicted.batch, predicted.prediction
    assert prediction is not None
    mean, std, folds = prediction.mean[index], prediction.std[index], prediction.folds[index]
    threshold = model.threshold
    unlike = prediction.unlike_training_data(index)
    decision = decide(mean, std, threshold=threshold, indeterminate_std=context.indeterminate_std,
                      unlike_training_data=unlike)
    ref = batch.refs[index]
    if unlike:  # the score row keeps the probabilities for audit; the decision makes no claim
        logger.info("instance %d: %s (gate score %.3f)", ref.instance_id, NOT_ASSESSABLE_TEXT,
                    prediction.gate_scores[index])
    return NewScore(
        instance_id=ref.instance_id, model_version=model.model_version,
        content_sha256=ref.content_sha256, probability_mean=mean, probability_std=std,
        fold_probabilities=tuple(folds), fold_votes=fold_votes(folds, threshold),
        threshold=threshold, decision=decision.value,
        # the image's decode time plus the batch's forward pass (docs/worker.md)
        latency_ms=round(batch.decode_ms[index] + predicted.infer_ms, 3),
        batch_size=len(batch.refs), device=model.device, worker_host=context.worker_host,
        cam=None if (cam := prediction.cam(index)) is None else as_rows(cam))


def record_batch(sessions: sessionmaker[Session], model: BatchModel, predicted: Predicted,
                 context: ScoringContext) -> BatchOutcome:
    """Write the batch's scores and failures in one transaction."""
    scores: list[ScoredImage] = []
    with sessions.begin() as session:
        for index in range(len(predicted.batch.refs)):
            score = _new_score(model, predicted, index, context)
            inserted = record_score(session, score)
            scores.append(ScoredImage(score.instance_id, score.probability_mean,
                                      score.probability_std, Decision(score.decision),
                                      inserted))
        for ref, reason in predicted.batch.failures:
            context.on_failure(session, ref, model.model_version, reason)
            logger.warning("instance %d: %s", ref.instance_id, reason)
    return BatchOutcome(tuple(scores), tuple(ref.instance_id for ref, _ in
                                             predicted.batch.failures))


def score_batch(sessions: sessionmaker[Session], model: BatchModel, batch: DecodedBatch,
                context: ScoringContext) -> BatchOutcome:
    """Predict a decoded batch and record scores and failures in one transaction.

    A prediction error propagates: nothing of the batch is recorded, so it is scored again.
    """
    return record_batch(sessions, model, predict_batch(model, batch), context)
