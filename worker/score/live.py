"""Live scoring: claim a batch of instances, then decode, predict and record them.

The task that calls :func:`score_instances` only adapts arguments. Claiming, releasing and
what a task reports back are here; decoding, prediction and recording are the one scoring
path in :mod:`worker.score.batch`, shared with re-scoring.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from common.metrics import scores_total, scoring_seconds
from db.models import InstanceStatus, utcnow
from db.scores import (
    ClaimedImage,
    claim_lead,
    claim_more,
    claimed_images,
    instance_state,
    release_claims,
)
from worker import hooks
from worker.score.batch import (
    BatchModel,
    ImageRef,
    ScoringContext,
    decode_batch,
    mark_instance_failed,
    predict_batch,
    record_batch,
)
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    """The settings live scoring uses (built from :class:`WorkerSettings`)."""

    batch_size: int
    indeterminate_std: float
    lease_s: float
    worker_host: str

    @classmethod
    def from_settings(cls, settings: WorkerSettings, worker_host: str) -> ScoringOptions:
        return cls(batch_size=settings.score_batch,
                   indeterminate_std=settings.indeterminate_std,
                   lease_s=settings.score_lease_s, worker_host=worker_host)


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


def score_instances(sessions: sessionmaker[Session], lead_id: int, token: str,
                    predictor: Callable[[], BatchModel], options: ScoringOptions) -> ScoreRun:
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
    hooks.after_claim(ids)
    started = time.monotonic()
    try:
        model = predictor()
        refs = [ImageRef(i.instance_id, i.file_path, i.content_sha256) for i in images]
        predicted = predict_batch(model, decode_batch(refs, model.preprocess))
    except Exception:
        with sessions.begin() as session:
            release_claims(session, ids, token)
        logger.exception("instance %d: scoring failed; %d claims released", lead_id, len(ids))
        raise
    context = ScoringContext(options.indeterminate_std, options.worker_host,
                             mark_instance_failed)
    outcome = record_batch(sessions, model, predicted, context)
    scoring_seconds().observe(time.monotonic() - started)
    for score in outcome.scores:
        if score.inserted:
            scores_total().labels(score.decision.value).inc()
        logger.info("instance %d: p=%.4f sd=%.4f -> %s%s", score.instance_id, score.mean,
                    score.std, score.decision.value,
                    "" if score.inserted else " (score already recorded)")
    studies = tuple(sorted({image.study_id for image in images}))
    return ScoreRun(tuple(ids), outcome.written, outcome.failed, studies)
