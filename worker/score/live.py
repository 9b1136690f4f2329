"""Scoring: claim a batch of instances, decode them, run the ensemble, record the scores.

The task that calls :func:`score_instances` only adapts arguments; everything that decides
what happens to a row is here, in plain functions over a session factory.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from sqlalchemy.orm import Session, sessionmaker

from db.models import InstanceStatus, utcnow
from db.scores import (
    ClaimedImage,
    claim_lead,
    claim_more,
    claimed_images,
    instance_state,
    mark_failed,
    record_score,
    release_claims,
)
from worker.score.decision import decide, fold_votes
from worker.score.ensemble import BatchPrediction

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What scoring needs of an ensemble (``worker.score.ensemble.Ensemble`` is one)."""

    device: str

    @property
    def model_version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def preprocess(self, path: Path) -> torch.Tensor: ...

    def predict(self, batch: torch.Tensor) -> BatchPrediction: ...


@dataclass(frozen=True)
class ScoringOptions:
    """The settings scoring uses."""

    batch_size: int = 8
    indeterminate_std: float = 0.2
    lease_s: float = 600.0
    hold_after_claim_s: float = 0.0
    worker_host: str = "localhost"


@dataclass(frozen=True)
class ScoreRun:
    """What one score task did: the instances it claimed, scored and failed, and the
    studies whose report should be (re)considered."""

    claimed: tuple[int, ...] = ()
    scored: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    studies: tuple[int, ...] = ()

    @property
    def noop(self) -> bool:
        return not self.claimed


def _claim(sessions: sessionmaker[Session], lead_id: int, token: str,
           options: ScoringOptions) -> tuple[list[ClaimedImage], ScoreRun | None]:
    """Claim the lead and up to ``batch_size - 1`` others; a ``ScoreRun`` when it's a no-op."""
    cutoff = utcnow() - dt.timedelta(seconds=options.lease_s)
    with sessions.begin() as session:
        if not claim_lead(session, lead_id, token, cutoff):
            state = instance_state(session, lead_id)
            if state is None:
                logger.warning("instance %d: unknown, nothing to score", lead_id)
                return [], ScoreRun()
            status, study_id = state
            logger.info("instance %d: already %s, nothing to score", lead_id, status)
            # A redelivered task re-triggers the study's report (harmless: it is idempotent).
            scored = status == InstanceStatus.SCORED.value
            return [], ScoreRun(studies=(study_id,) if scored else ())
        others = claim_more(session, lead_id, token, options.batch_size - 1)
        return claimed_images(session, [lead_id, *others]), None


def _decode(predictor: Predictor, images: Sequence[ClaimedImage]
            ) -> tuple[list[tuple[ClaimedImage, torch.Tensor, float]], dict[int, str]]:
    """Preprocess each image; failures are collected with a reason, never raised."""
    decoded: list[tuple[ClaimedImage, torch.Tensor, float]] = []
    failures: dict[int, str] = {}
    for image in images:
        started = time.monotonic()
        try:
            tensor = predictor.preprocess(Path(image.file_path))
        except Exception as exc:  # any decoder error: record it, lose nothing
            failures[image.instance_id] = f"cannot decode: {type(exc).__name__}: {exc}"
            logger.warning("instance %d: %s", image.instance_id, failures[image.instance_id])
            continue
        decoded.append((image, tensor, (time.monotonic() - started) * 1000))
    return decoded, failures


def _record(sessions: sessionmaker[Session], predictor: Predictor, options: ScoringOptions,
            decoded: Sequence[tuple[ClaimedImage, torch.Tensor, float]],
            prediction: BatchPrediction | None, infer_ms: float,
            failures: dict[int, str]) -> list[int]:
    """Write scores and failures in one transaction; returns the ids newly scored."""
    scored: list[int] = []
    with sessions.begin() as session:
        for index, (image, _, decode_ms) in enumerate(decoded):
            assert prediction is not None
            mean, std = prediction.mean[index], prediction.std[index]
            folds = prediction.folds[index]
            decision = decide(mean, std, threshold=predictor.threshold,
                              indeterminate_std=options.indeterminate_std)
            inserted = record_score(session, {
                "instance_id": image.instance_id, "model_version": predictor.model_version,
                "content_sha256": image.content_sha256, "probability_mean": mean,
                "probability_std": std, "fold_probabilities": list(folds),
                "fold_votes": fold_votes(folds, predictor.threshold),
                "threshold": predictor.threshold, "decision": decision.value,
                "latency_ms": round(decode_ms + infer_ms, 3), "batch_size": len(decoded),
                "device": predictor.device, "worker_host": options.worker_host,
                "created_at": utcnow(),
            })
            if inserted:
                scored.append(image.instance_id)
            logger.info("instance %d: p=%.4f sd=%.4f -> %s%s", image.instance_id, mean, std,
                        decision.value, "" if inserted else " (score already recorded)")
        for instance_id, reason in failures.items():
            mark_failed(session, instance_id, reason)
    return scored


def score_instances(sessions: sessionmaker[Session], lead_id: int, token: str,
                    predictor: Callable[[], Predictor], options: ScoringOptions) -> ScoreRun:
    """Score instance ``lead_id`` together with up to ``batch_size - 1`` other queued ones.

    ``token`` identifies the task (its Celery id, the same on redelivery): a redelivered task
    takes back what it had claimed. ``predictor`` is called only once rows are claimed, so the
    ensemble loads lazily. If it can't be loaded or run, the claims are released (the node's
    sweeper publishes them again) and the error propagates.
    """
    images, noop = _claim(sessions, lead_id, token, options)
    if noop is not None:
        return noop
    ids = [image.instance_id for image in images]
    logger.info("instance %d: claimed a batch of %d", lead_id, len(ids))
    if options.hold_after_claim_s > 0:
        time.sleep(options.hold_after_claim_s)  # fault-injection tests only
    try:
        model = predictor()
        decoded, failures = _decode(model, images)
        prediction, infer_ms = None, 0.0
        if decoded:
            started = time.monotonic()
            prediction = model.predict(torch.stack([tensor for _, tensor, _ in decoded]))
            infer_ms = (time.monotonic() - started) * 1000
    except Exception:
        with sessions.begin() as session:
            release_claims(session, ids, token)
        logger.exception("instance %d: scoring failed; %d claims released", lead_id, len(ids))
        raise
    scored = _record(sessions, model, options, decoded, prediction, infer_ms, failures)
    studies = tuple(sorted({image.study_id for image in images}))
    return ScoreRun(tuple(ids), tuple(scored), tuple(failures), studies)
