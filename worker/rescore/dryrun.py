"""``rescore --dry-run``: what the real run would change, without changing anything.

The instances the run would score are scored here in memory, with the same loader, ensemble
and decision rule as the real run, and compared with the stored scores exactly as the real
run compares its recorded ones. So "studies changed" and the studies that would get a new SR
are what the real run reports (a test compares the two), not a count of what is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from db.models import utcnow
from db.runs import ScopeRow, ScoreRow, study_scores, study_uids
from worker.rescore.compare import Comparison, compare
from worker.rescore.loader import make_loader
from worker.rescore.modes import SendMode
from worker.rescore.report import studies_to_report
from worker.score.batch import ImageRef, predict_batch
from worker.score.decision import decide
from worker.score.ensemble import Ensemble
from worker.settings import WorkerSettings


def predict_in_memory(model: Ensemble, todo: Sequence[ImageRef], study_of: dict[int, int],
                      worker: WorkerSettings) -> list[ScoreRow]:
    """Score ``todo`` as the real run would, returning score rows that are not recorded."""
    settings = worker.rescore
    loader = make_loader(todo, model.config, batch_size=settings.batch,
                         workers=min(settings.loader_workers, len(todo)))
    rows: list[ScoreRow] = []
    now = utcnow()
    for batch in loader:
        predicted = predict_batch(model, batch)
        if predicted.prediction is None:
            continue
        p = predicted.prediction
        for index, ref in enumerate(batch.refs):
            decision = decide(p.mean[index], p.std[index], threshold=model.threshold,
                              indeterminate_std=worker.indeterminate_std,
                              unlike_training_data=p.unlike_training_data(index))
            rows.append(ScoreRow(ref.instance_id, study_of[ref.instance_id], "",
                                 model.model_version, decision, p.mean[index], p.std[index],
                                 tuple(p.folds[index]), now))
    return rows


def dry_run_outcome(sessions: sessionmaker[Session], rows: Sequence[ScopeRow],
                    todo: Sequence[ImageRef], model: Ensemble | None, send: SendMode,
                    worker: WorkerSettings, model_version: str
                    ) -> tuple[Comparison, dict[int, str], tuple[int, ...]]:
    """(comparison, study UIDs, studies that would be reported) of the run not made."""
    study_ids = sorted({r.study_id for r in rows})
    with sessions() as session:
        stored = study_scores(session, study_ids)
        uids = study_uids(session, study_ids)
    predicted: list[ScoreRow] = []
    if model is not None and todo:
        predicted = predict_in_memory(model, todo, {r.instance_id: r.study_id for r in rows},
                                      worker)
    scope = {r.instance_id for r in rows}
    comparison = compare([*stored, *predicted], scope, model_version,
                         max_samples=worker.rescore.drift_samples)
    would = studies_to_report(sessions, send, comparison, model_version)
    return comparison, uids, tuple(would)
