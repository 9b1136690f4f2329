"""``rescore --distributed``: publish batches on the ``score`` queue, follow progress in the DB.

Any number of ``cxr-triage worker`` processes consuming ``score`` pick up
``cxr_triage.rescore_batch`` tasks; the command only publishes and then watches the score and
``rescore_failure`` tables until every published instance is done. If nothing moves for
``TRIAGE_RESCORE_STALL_S`` it stops with an error; the tasks stay queued and a rerun continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.errors import TriageError
from common.queues import QUEUE_SCORE, TASK_RESCORE_BATCH
from db.runs import chunks, done_ids
from worker.rescore.progress import Progress

logger = logging.getLogger(__name__)

POLL_S = 1.0


class StalledError(TriageError):
    """Distributed re-scoring made no progress for too long."""


def publish(app: Celery, ids: Sequence[int], model_dir: Path, *, model_version: str,
            run_id: int, batch: int, indeterminate_std: float) -> int:
    """One ``rescore_batch`` task per ``batch`` ids; returns how many tasks were published."""
    tasks = 0
    for part in chunks(list(ids), batch):
        app.send_task(TASK_RESCORE_BATCH, args=[list(part), str(model_dir.resolve()),
                                                model_version],
                      kwargs={"run_id": run_id, "indeterminate_std": indeterminate_std},
                      queue=QUEUE_SCORE)
        tasks += 1
    return tasks


def wait_for(sessions: sessionmaker[Session], ids: Sequence[int], model_version: str, *,
             stall_s: float, log_every_s: float,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until every id has a score or a failure under ``model_version``."""
    remaining = set(ids)
    last_move = time.monotonic()
    with Progress(len(remaining), "rescore (distributed)", log_every_s) as progress:
        while remaining:
            sleep(POLL_S)
            with sessions() as session:
                done = done_ids(session, sorted(remaining), model_version)
            if done:
                remaining -= done
                progress.advance(len(done))
                last_move = time.monotonic()
            elif time.monotonic() - last_move > stall_s:
                raise StalledError(
                    f"no progress for {stall_s:.0f} s with {len(remaining)} instances "
                    "outstanding: are `cxr-triage worker` processes consuming the score queue, "
                    "and do they see the model directory at the same path? The tasks stay "
                    "queued; rerun the same command to continue")


def score_distributed(sessions: sessionmaker[Session], app: Celery, ids: Sequence[int],
                      model_dir: Path, *, model_version: str, run_id: int, batch: int,
                      indeterminate_std: float, stall_s: float, log_every_s: float) -> None:
    """Publish ``ids`` in batches and wait for the workers to score them."""
    try:
        tasks = publish(app, ids, model_dir, model_version=model_version, run_id=run_id,
                        batch=batch, indeterminate_std=indeterminate_std)
    except TriageError:
        raise
    except Exception as exc:  # kombu/redis errors: say what to check
        raise TriageError(f"cannot publish to the broker ({exc}); check TRIAGE_BROKER_URL") \
            from exc
    logger.info("run %d: %d instances published as %d tasks on the score queue", run_id,
                len(ids), tasks)
    wait_for(sessions, ids, model_version, stall_s=stall_s, log_every_s=log_every_s)
