"""Live scoring: claim a batch of instances, then decode, predict and record them.

The task that calls :func:`score_instances` only adapts arguments. Claiming, releasing and
what a task reports back are here; decoding, prediction and recording are the one scoring
path in :mod:`worker.score.batch`, shared with re-scoring.

A task scores its lead's batch, then goes on claiming and scoring batches of queued instances
(up to ``max_batches``) while there are any. With ``decode_ahead`` the next batch is claimed on
a second thread while the current one is predicted, and read and preprocessed meanwhile by a
decoding process (:mod:`worker.score.ahead`: JPEG 2000 and JPEG-LS decode with the GIL held,
so a thread could not run beside inference), which hides decoding (40 to 200 ms per image)
behind inference.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
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
from worker.score.ahead import decode_ahead, start_decoder
from worker.score.batch import (
    BatchModel,
    DecodedBatch,
    ImageRef,
    Predicted,
    ScoringContext,
    decode_batch,
    mark_instance_failed,
    predict_batch,
    record_batch,
)
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


# Batches one task scores at most before it returns (the rest stays queued for the next
# task): a model promoted meanwhile is picked up within this many batches.
MAX_BATCHES_PER_TASK = 8


@dataclass(frozen=True)
class ScoringOptions:
    """The settings live scoring uses (built from :class:`WorkerSettings`)."""

    batch_size: int
    indeterminate_std: float
    lease_s: float
    worker_host: str
    decode_ahead: bool = True
    max_batches: int = MAX_BATCHES_PER_TASK

    @classmethod
    def from_settings(cls, settings: WorkerSettings, worker_host: str) -> ScoringOptions:
        return cls(batch_size=settings.score_batch,
                   indeterminate_std=settings.indeterminate_std,
                   lease_s=settings.score_lease_s, worker_host=worker_host,
                   decode_ahead=settings.decode_ahead)


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

    def then(self, other: ScoreRun) -> ScoreRun:
        """This run followed by ``other`` (the next batch of the same task)."""
        return ScoreRun(self.claimed + other.claimed, self.scored + other.scored,
                        self.failed + other.failed,
                        tuple(sorted({*self.studies, *other.studies})))


@dataclass(frozen=True)
class ClaimedBatch:
    """Claimed instances and their decoded images."""

    images: tuple[ClaimedImage, ...]
    decoded: DecodedBatch

    @property
    def ids(self) -> list[int]:
        return [image.instance_id for image in self.images]


OnRecorded = Callable[[ScoreRun], None]


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


def _refs(images: Sequence[ClaimedImage]) -> list[ImageRef]:
    return [ImageRef(i.instance_id, i.file_path, i.content_sha256) for i in images]


def _release(sessions: sessionmaker[Session], ids: Sequence[int], token: str) -> None:
    with sessions.begin() as session:
        release_claims(session, ids, token)


def claim_next(sessions: sessionmaker[Session], lead_id: int, token: str,
               options: ScoringOptions, model: BatchModel, in_hand: Sequence[int],
               elsewhere: bool = True) -> ClaimedBatch | None:
    """Claim and decode the task's next batch (``None``: nothing queued).

    ``in_hand`` are the claims of the batch still being predicted. ``elsewhere``: decode in
    the decoding process (:mod:`worker.score.ahead`), else in this thread. Decoding turns every
    image error into a recorded failure; should anything else fail, the claims are released.
    """
    with sessions.begin() as session:
        ids = claim_more(session, lead_id, token, options.batch_size, exclude=in_hand)
        images = tuple(claimed_images(session, ids)) if ids else ()
    if not images:
        return None
    try:
        refs = _refs(images)
        decoded = decode_ahead(refs, model) if elsewhere else decode_batch(refs, model.preprocess)
        return ClaimedBatch(images, decoded)
    except BaseException:
        _release(sessions, ids, token)
        raise


def _one_torch_thread() -> None:
    """The decode-ahead thread claims, then waits for the decoding process; should it decode
    itself (no decoding process), its torch ops use one thread."""
    torch.set_num_threads(1)


def _done(function: Callable[..., ClaimedBatch | None],
          *args: object) -> Future[ClaimedBatch | None]:
    """``function(*args)`` run here, as a finished future (the serial path's next batch)."""
    future: Future[ClaimedBatch | None] = Future()
    try:
        future.set_result(function(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


def _collect(upcoming: Future[ClaimedBatch | None], lead_id: int) -> ClaimedBatch | None:
    """The decoded-ahead batch; a failure to claim it ends the task's chain (logged)."""
    try:
        return upcoming.result()
    except Exception:
        logger.exception("instance %d: claiming the next batch failed; the task ends here",
                         lead_id)
        return None


def _release_with_ahead(sessions: sessionmaker[Session], token: str, lead_id: int,
                        upcoming: Future[ClaimedBatch | None] | None,
                        held: Sequence[int] = ()) -> list[int]:
    """Release ``held`` and the claims of the batch decoded ahead (waited for); the ids
    released."""
    ahead = _collect(upcoming, lead_id) if upcoming is not None else None
    ids = list(held) + (ahead.ids if ahead is not None else [])
    if ids:
        _release(sessions, ids, token)
    return ids


def _predict(sessions: sessionmaker[Session], model: BatchModel, batch: ClaimedBatch,
             token: str, upcoming: Future[ClaimedBatch | None] | None) -> Predicted:
    """Predict ``batch``; on failure release its claims and those of the batch decoded ahead,
    then re-raise (the node's sweeper publishes them again)."""
    try:
        return predict_batch(model, batch.decoded)
    except Exception:
        held = _release_with_ahead(sessions, token, batch.ids[0], upcoming, batch.ids)
        logger.exception("instance %d: scoring failed; %d claims released", held[0], len(held))
        raise


def _give_back(sessions: sessionmaker[Session], upcoming: Future[ClaimedBatch | None] | None,
               token: str, lead_id: int) -> None:
    """The task stops before the batch decoded ahead: release its claims (the current batch's
    stay with the task, whose retry takes them back)."""
    try:
        _release_with_ahead(sessions, token, lead_id, upcoming)
    except Exception:  # e.g. the database is down: the claims are taken over after the lease
        logger.exception("instance %d: claims decoded ahead not released", lead_id)


def _record(sessions: sessionmaker[Session], model: BatchModel, predicted: Predicted,
            batch: ClaimedBatch, options: ScoringOptions, started: float) -> ScoreRun:
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
    studies = tuple(sorted({image.study_id for image in batch.images}))
    return ScoreRun(tuple(batch.ids), outcome.written, outcome.failed, studies)


def score_instances(sessions: sessionmaker[Session], lead_id: int, token: str,
                    predictor: Callable[[], BatchModel], options: ScoringOptions,
                    on_recorded: OnRecorded | None = None) -> ScoreRun:
    """Score instance ``lead_id`` together with up to ``batch_size - 1`` other queued ones,
    then further batches of queued instances, up to ``options.max_batches`` in all.

    ``token`` identifies the task (its Celery id, the same on redelivery): a redelivered task
    takes back what it had claimed. ``predictor`` is called only once rows are claimed, so the
    ensemble loads lazily. If it can't be loaded or run, the claims are released (the node's
    sweeper publishes them again) and the error propagates. ``on_recorded`` is called with
    each batch's run as soon as it is recorded (the task schedules the studies' reports);
    the returned run covers every batch.
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
        batch: ClaimedBatch | None = ClaimedBatch(
            tuple(images), decode_batch(_refs(images), model.preprocess))
    except Exception:
        _release(sessions, ids, token)
        logger.exception("instance %d: scoring failed; %d claims released", lead_id, len(ids))
        raise
    if options.decode_ahead and options.max_batches > 1:
        start_decoder(model)  # once per process; started while the first batch is predicted
    total = ScoreRun()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead",
                            initializer=_one_torch_thread) as ahead:
        number = 0
        while batch is not None:
            number += 1
            last = number >= options.max_batches
            upcoming = None if last or not options.decode_ahead else ahead.submit(
                claim_next, sessions, lead_id, token, options, model, batch.ids)
            predicted = _predict(sessions, model, batch, token, upcoming)
            try:
                run = _record(sessions, model, predicted, batch, options, started)
                if on_recorded is not None:
                    on_recorded(run)
            except Exception:
                _give_back(sessions, upcoming, token, lead_id)
                raise
            total = total.then(run)
            started = time.monotonic()
            if last:
                break
            if upcoming is None:  # no decode-ahead: claim and decode the next batch now
                upcoming = _done(claim_next, sessions, lead_id, token, options, model, (),
                                 False)
            batch = _collect(upcoming, lead_id)
            if batch is not None:
                logger.info("instance %d: claimed a further batch of %d", lead_id,
                            len(batch.images))
    return total
