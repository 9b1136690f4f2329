"""``cxr-triage deliveries`` and ``redeliver`` in-process, on SQLite and the filesystem broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.cli import main
from db.models import Delivery, DeliveryState, Instance
from tests.worker.conftest import AddInstance, report_opts, scoring_options
from tests.worker.fakes import FixedPredictor
from worker.deliver.destinations import parse_destinations
from worker.report.identity import ModelIdentity
from worker.report.study import report_study
from worker.score.live import score_instances


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_deliveries_and_redeliver(
    sessions: sessionmaker[Session], add_instance: AddInstance, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    instance = add_instance(generate_uid())
    predictor = FixedPredictor()
    with sessions() as session:
        row = session.get(Instance, instance)
        assert row is not None
    predictor.probabilities[row.file_path] = 0.8
    score_instances(sessions, instance, "t", lambda: predictor, scoring_options())
    report_study(sessions, row.study_id, identity=ModelIdentity("t", "fixed-v1", "00"),
                 model_version="fixed-v1",
                 destinations=parse_destinations("PACS@127.0.0.1:4242"),
                 options=report_opts(tmp_path / "sr", quiet_s=0))
    with sessions.begin() as session:
        delivery = session.scalars(select(Delivery)).one()
        delivery.state = DeliveryState.FAILED
        delivery.last_error = "refused"
    monkeypatch.setenv("TRIAGE_DB_URL", db_url)
    monkeypatch.setenv("TRIAGE_BROKER_URL", "filesystem://")
    monkeypatch.setenv("TRIAGE_BROKER_DIR", str(tmp_path / "broker"))

    assert main(["deliveries", "--failed"]) == 0
    listed = capsys.readouterr().out
    assert "PACS@127.0.0.1:4242\tsr\tfailed\t" in listed and "refused" in listed
    assert main(["redeliver", "--all-failed"]) == 0
    assert "queued again" in capsys.readouterr().out
    assert len(list((tmp_path / "broker" / "queue").iterdir())) == 1  # the deliver task
    with sessions() as session:
        assert session.scalars(select(Delivery.state)).one() == "pending"
    assert main(["redeliver"]) == 2
