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
from db.runs import done_ids, instance_files, record_failure
from worker.retry_policy import DB_RETRY
from worker.runtime import WorkerContext
from worker.score.batch import ImageRef, ScoringContext, decode_batch, score_batch
from worker.score.ensemble import Ensemble

logger = logging.getLogger(__name__)




class EnsembleCache:
    """The last ensemble a process loaded for re-scoring (one at a time: GPU memory)."""

    def __init__(self, *, device: str, torch_threads: int) -> None:
        self.device = device
        self.torch_threads = torch_threads
        self._lock = threading.Lock()
        self._loaded: tuple[Path, Ensemble] | None = None

    def get(self, model_dir: Path) -> Ensemble:
        with self._lock:
            if self._loaded is None or self._loaded[0] != model_dir:
                self._loaded = None  # drop the old one before loading the next
                self._loaded = (model_dir, Ensemble.load(
                    model_dir, device=self.device, torch_threads=self.torch_threads))
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
                record_failure(session, context.run_id, ref.instance_id, model_version,
                               ref.content_sha256, reason)
        return 0, len(refs)
    written, failed = score_batch(sessions, model, decode_batch(refs, model.config), context)
    logger.info("rescore batch of %d under %s: %d scored, %d failed", len(refs),
                model_version, written, failed)
    return written, failed


def register_rescore_task(app: Celery, context: WorkerContext) -> None:
    """Define ``cxr_triage.rescore_batch`` on ``app``, bound to the worker ``context``."""
    cache = EnsembleCache(device=context.settings.device,
                          torch_threads=context.settings.torch_threads)

    @app.task(name=TASK_RESCORE_BATCH, **DB_RETRY)
    def rescore_batch_task(instance_ids: list[int], model_dir: str, model_version: str,
                           run_id: int | None = None,
                           indeterminate_std: float | None = None) -> None:
        std = context.settings.indeterminate_std if indeterminate_std is None \
            else float(indeterminate_std)
        rescore_batch(context.sessions, [int(i) for i in instance_ids], Path(model_dir),
                      model_version=model_version, cache=cache,
                      context=ScoringContext(run_id, std, context.host))
