"""The distributed re-scoring task: ``cxr_triage.rescore_batch`` on the ``score`` queue.

``cxr-triage rescore --distributed`` publishes batches of instance ids with the ensemble
directory (which every worker must see at the same path). Each worker process loads that
ensemble once and keeps it (one at a time, beside the live one). The task is idempotent:
instances already scored, or already recorded as failed, under that model version are left
out, so a redelivered or duplicated message costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.errors import TriageError
from common.queues import TASK_RESCORE_BATCH
from db.runs import done_ids, instance_files
from worker.retry_policy import DB_RETRY
from worker.runtime import WorkerContext
from worker.score.batch import (
    ImageRef,
    RunFailures,
    ScoringContext,
    decode_batch,
    score_batch,
)
from worker.score.ensemble import Ensemble
from worker.settings import InferenceSettings

logger = logging.getLogger(__name__)


class EnsembleCache:
    """The last ensemble a process loaded for re-scoring (one at a time: GPU memory), loaded
    with the worker's inference settings, as live scoring loads its own."""

    def __init__(self, inference: InferenceSettings) -> None:
        self.inference = inference
        self._lock = threading.Lock()
        self._loaded: tuple[Path, Ensemble] | None = None

    def get(self, model_dir: Path) -> Ensemble:
        with self._lock:
            if self._loaded is None or self._loaded[0] != model_dir:
                self._loaded = None  # drop the old one before loading the next
                self._loaded = (model_dir, Ensemble.load(model_dir, self.inference))
            return self._loaded[1]


def _pending(sessions: sessionmaker[Session], ids: Sequence[int],
             model_version: str) -> list[ImageRef]:
    with sessions() as session:
        done = done_ids(session, ids, model_version)
        return [ImageRef(i, path, sha) for i, path, sha in instance_files(
            session, [i for i in ids if i not in done])]


def rescore_batch(sessions: sessionmaker[Session], ids: Sequence[int], model_dir: Path, *,
                  model_version: str, cache: EnsembleCache, context: ScoringContext
                  ) -> tuple[int, int]:
    """Score the not yet done ``ids`` with the ensemble in ``model_dir``.

    Returns (scores written, failures recorded). When the ensemble can't be loaded, or is not
    ``model_version``, every instance is recorded as failed with that reason (the run ends
    ``partial`` and says why; ``--retry-failed`` tries them again).
    """
    refs = _pending(sessions, ids, model_version)
    if not refs:
        logger.info("rescore batch of %d: already done under %s", len(ids), model_version)
        return 0, 0
    try:
        model = cache.get(model_dir)
        if model.model_version != model_version:
            raise TriageError(f"{model_dir} now holds model {model.model_version}, the run "
                              f"expected {model_version}; rerun the rescore")
    except TriageError as exc:
        reason = f"worker cannot use the ensemble: {exc}"
        logger.error("rescore batch of %d: %s", len(refs), reason)
        with sessions.begin() as session:
            for ref in refs:
                context.on_failure(session, ref, model_version, reason)
        return 0, len(refs)
    outcome = score_batch(sessions, model, decode_batch(refs, model.preprocess), context)
    written, failed = len(outcome.written), len(outcome.failed)
    logger.info("rescore batch of %d under %s: %d scored, %d failed", len(refs),
                model_version, written, failed)
    return written, failed


def register_rescore_task(app: Celery, context: WorkerContext) -> EnsembleCache:
    """Define ``cxr_triage.rescore_batch`` on ``app``, bound to the worker ``context``.

    Returns the task's ensemble cache (loading with the worker's inference settings).
    """
    cache = EnsembleCache(context.settings.inference)

    @app.task(name=TASK_RESCORE_BATCH, **DB_RETRY)
    def rescore_batch_task(instance_ids: list[int], model_dir: str, model_version: str,
                           run_id: int | None = None,
                           indeterminate_std: float | None = None) -> None:
        std = context.settings.indeterminate_std if indeterminate_std is None \
            else float(indeterminate_std)
        rescore_batch(context.sessions, [int(i) for i in instance_ids], Path(model_dir),
                      model_version=model_version, cache=cache,
                      context=ScoringContext(std, context.host, RunFailures(run_id)))

    return cache
