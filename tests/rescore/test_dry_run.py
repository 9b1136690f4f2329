"""``rescore --dry-run`` reports what the real run then does; a model that is not live sends
nothing unless ``--send`` says so (issue 13)."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.runs import Selection
from tests.rescore.conftest import ensemble_means, set_threshold
from tests.worker.conftest import AddInstance, build_ensemble
from worker.rescore.cli import choose_send
from worker.rescore.modes import SendMode
from worker.rescore.run import RescoreRequest, run_rescore
from worker.settings import InferenceSettings, RescoreSettings, WorkerSettings

STUDIES = 6


def _worker(tmp_path: Path, db_url: str, live: Path) -> WorkerSettings:
    return WorkerSettings(model_dir=live, sr_dir=tmp_path / "sr", study_quiet_s=0.0,
                          inference=InferenceSettings(device="cpu", torch_threads=1),
                          rescore=RescoreSettings(batch=4, loader_workers=0),
                          model_store=tmp_path / "store")


def _no_broker() -> Celery:
    raise AssertionError("a local run without destinations needs no broker")


def test_dry_run_predicts_the_real_run(tmp_path: Path, db_url: str, tiny_ensemble: Path,
                                       sessions: sessionmaker[Session],
                                       add_instance: AddInstance) -> None:
    files = []
    for index in range(STUDIES):
        add_instance(f"1.2.826.0.1.3680043.10.999.{index}", seed=index)
        files.append(sorted((tmp_path / "storage").glob("*.dcm"))[-1])
    worker = _worker(tmp_path, db_url, tiny_ensemble)
    first = run_rescore(sessions, RescoreRequest(model_dir=tiny_ensemble, send=SendMode.ALL),
                        worker=worker, broker=_no_broker)
    assert first.scored_now == STUDIES and len(first.reports.written) == STUDIES

    model_b = build_ensemble(tmp_path / "model_b", seed=7, label="model B")
    means = sorted(ensemble_means(model_b, files))
    set_threshold(model_b, (means[STUDIES // 2 - 1] + means[STUDIES // 2]) / 2)
    request = RescoreRequest(model_dir=model_b, selection=Selection(), send=SendMode.CHANGED)
    dry = run_rescore(sessions, RescoreRequest(model_dir=model_b, send=SendMode.CHANGED,
                                               dry_run=True), worker=worker, broker=_no_broker)
    real = run_rescore(sessions, request, worker=worker, broker=_no_broker)

    assert dry.run_id is None and real.run_id is not None
    assert dry.to_score == real.scored_now == STUDIES
    assert len(dry.comparison.changed) == STUDIES // 2  # those below B's threshold
    assert dry.comparison.changed == real.comparison.changed
    assert dry.comparison.decisions_changed == real.comparison.decisions_changed
    assert dry.comparison.flagged == real.comparison.flagged
    assert sorted(dry.would_report) == sorted(s for s, _ in real.reports.written)


def test_a_model_that_is_not_live_sends_nothing_by_default(
        tmp_path: Path, db_url: str, tiny_ensemble: Path,
        sessions: sessionmaker[Session]) -> None:
    worker = _worker(tmp_path, db_url, tiny_ensemble)
    other = build_ensemble(tmp_path / "other", seed=5, label="other")
    mode, note = choose_send(sessions, worker, other, None)
    assert mode is SendMode.NONE and note is not None and "not the live model" in note
    assert choose_send(sessions, worker, other, "changed") == (SendMode.CHANGED, None)
    assert choose_send(sessions, worker, tiny_ensemble, None) == (SendMode.CHANGED, None)
