"""``cxr-triage purge``: old instances, scores and claims go; what a report references stays."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxr_triage.cli import main
from db.models import (
    Decision,
    Instance,
    InstanceStatus,
    Priority,
    Report,
    Score,
    ScoreClaim,
    Study,
)
from db.session import make_engine, make_session_factory
from tests.support.node import migrate

NOW = dt.datetime.now(dt.UTC)


def _instance(session: Session, study: Study, storage: Path, name: str, age_days: float,
              status: InstanceStatus = InstanceStatus.SCORED) -> Instance:
    path = storage / study.study_instance_uid / f"{name}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM" + name.encode())
    instance = Instance(
        sop_instance_uid=f"1.2.3.{int.from_bytes(name.encode()) % 10**12}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        study_id=study.id, series_instance_uid="1.2.3.9", calling_ae="STORESCU",
        received_at=NOW - dt.timedelta(days=age_days), file_path=str(path), size_bytes=10,
        transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64, status=status)
    session.add(instance)
    session.flush()
    if status is InstanceStatus.SCORED:
        session.add(Score(instance_id=instance.id, model_version="m1", content_sha256="0" * 64,
                          probability_mean=0.5, probability_std=0.1, fold_probabilities=[0.5],
                          fold_votes=1, threshold=0.5, decision=Decision.SUSPECTED,
                          latency_ms=1.0, batch_size=1, device="cpu", worker_host="h"))
        session.add(ScoreClaim(instance_id=instance.id, token=f"task-{name}"))
    return instance


def _report(session: Session, study: Study, source: Instance, sr_path: Path) -> None:
    sr_path.write_bytes(b"SR")
    session.add(Report(
        study_id=study.id, model_version="m1", revision=1, decision=Decision.SUSPECTED,
        priority=Priority.HIGH, probability_mean=0.5, probability_std=0.1,
        source_instance_id=source.id, scored_instance_count=1,
        sr_study_instance_uid=study.study_instance_uid, sr_series_instance_uid="1.2.3.8",
        sr_sop_instance_uid=f"1.2.3.7.{source.id}", file_path=str(sr_path), worker_host="h"))


def _counts(session: Session) -> dict[str, int]:
    return {table.__tablename__: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Study, Instance, Score, ScoreClaim, Report)}


def test_purge_keeps_what_reports_reference(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(db_url)
    storage = tmp_path / "storage"
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        reported, old_only, recent = (Study(study_instance_uid=f"1.2.826.0.{i}") for i in range(3))
        session.add_all([reported, old_only, recent])
        session.flush()
        source = _instance(session, reported, storage, "source", 40)
        sibling = _instance(session, reported, storage, "sibling", 40)
        _report(session, reported, source, storage / "report.sr.dcm")
        lone = _instance(session, old_only, storage, "lone", 40, InstanceStatus.SKIPPED)
        in_flight = _instance(session, old_only, storage, "stuck", 40, InstanceStatus.QUEUED)
        fresh = _instance(session, recent, storage, "fresh", 1)
        paths = {i.sop_instance_uid: Path(i.file_path)
                 for i in (source, sibling, lone, in_flight, fresh)}
        names = {"source": source.sop_instance_uid, "sibling": sibling.sop_instance_uid,
                 "lone": lone.sop_instance_uid, "stuck": in_flight.sop_instance_uid,
                 "fresh": fresh.sop_instance_uid}
    with sessions() as session:
        before = _counts(session)
    monkeypatch.setenv("TRIAGE_DB_URL", db_url)
    monkeypatch.setenv("TRIAGE_STORAGE_DIR", str(storage))

    assert main(["purge", "--older-than", "30", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "would delete 2 instances, 1 scores, 1 claims" in dry and "kept 1 instances" in dry
    with sessions() as session:
        assert _counts(session) == before
    assert all(path.exists() for path in paths.values())

    assert main(["purge", "--older-than", "30"]) == 0
    out = capsys.readouterr().out
    assert "deleted 2 instances, 1 scores, 1 claims" in out and "deleted 2 files" in out
    with sessions() as session:
        left = set(session.scalars(select(Instance.sop_instance_uid)))
        assert left == {names["source"], names["stuck"], names["fresh"]}
        assert _counts(session) == {"study": 3, "instance": 3, "score": 2, "score_claim": 2,
                                    "report": 1}
        assert session.scalar(select(Score.instance_id).join(
            Instance, Instance.id == Score.instance_id).where(
            Instance.sop_instance_uid == names["source"])) is not None
    assert not paths[names["sibling"]].exists() and not paths[names["lone"]].exists()
    assert paths[names["source"]].exists() and (storage / "report.sr.dcm").exists()
    assert paths[names["fresh"]].exists() and paths[names["stuck"]].exists()

    # Everything finished goes once nothing references it; an emptied study goes with it.
    assert main(["purge", "--older-than", "0"]) == 0
    capsys.readouterr()
    with sessions() as session:
        assert set(session.scalars(select(Instance.sop_instance_uid))) == {
            names["source"], names["stuck"]}
        assert session.scalar(select(func.count()).select_from(Study)) == 2
    engine.dispose()


def test_purge_refuses_a_negative_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRIAGE_DB_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert main(["purge", "--older-than", "-1"]) == 2
    assert "cxr-triage purge: error: --older-than -1 is negative" in capsys.readouterr().err
