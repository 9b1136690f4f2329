"""The worklist: priority order, filters, and patient data hidden unless asked for."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cxr_triage.cli import main
from db.migrate import upgrade
from db.models import Delivery, Instance, Report, Study, utcnow
from db.session import make_engine, make_session_factory

# (accession, minutes ago, decision or None, probability)
STUDIES = [
    ("A-LOW", 50, "not_suspected", 0.10),
    ("A-SUSP-MID", 40, "suspected", 0.70),
    ("A-INDET", 30, "indeterminate", 0.45),
    ("A-SUSP-HIGH", 20, "suspected", 0.95),
    ("A-PENDING", 10, None, None),
    ("A-OLDEST", 60, "not_suspected", 0.20),
    ("A-LATERAL", 5, None, None),
]


def _seed(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    now = utcnow()
    with make_session_factory(engine).begin() as session:
        for index, (accession, minutes, decision, probability) in enumerate(STUDIES):
            received = now - dt.timedelta(minutes=minutes)
            study = Study(study_instance_uid=f"1.2.3.{index}", accession_number=accession,
                          patient_name=f"DOE^{accession}", patient_id=f"PID{index}",
                          first_received_at=received, last_received_at=received)
            session.add(study)
            session.flush()
            instance = Instance(
                sop_instance_uid=f"1.2.3.{index}.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                study_id=study.id, series_instance_uid=f"1.2.3.{index}.9", calling_ae="CR1",
                received_at=received, updated_at=received, file_path="/x", size_bytes=1,
                transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64,
                status="skipped" if accession == "A-LATERAL" else "queued",
                receive_count=1, enqueue_count=1)
            session.add(instance)
            session.flush()
            if decision is None:
                continue
            for revision, p in enumerate((0.5, probability), 1):  # only the latest counts
                report = Report(
                    study_id=study.id, model_version="m1", revision=revision, decision=decision,
                    priority="HIGH" if decision == "suspected" else "ROUTINE",
                    probability_mean=p, probability_std=0.05, source_instance_id=instance.id,
                    scored_instance_count=1, sr_study_instance_uid=study.study_instance_uid,
                    sr_series_instance_uid=f"1.2.4.{index}",
                    sr_sop_instance_uid=f"1.2.5.{index}.{revision}",
                    file_path="/sr", worker_host="h")
                session.add(report)
                session.flush()
                session.add(Delivery(report_id=report.id, destination="PACS@127.0.0.1:4242",
                                     state="sent" if index % 2 else "retrying", attempts=1))
    engine.dispose()


def test_worklist_order_filters_and_phi(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(db_url)
    assert main(["worklist", "--db-url", db_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["accession_number"] for r in rows] == [
        "A-SUSP-HIGH", "A-SUSP-MID", "A-INDET", "A-OLDEST", "A-LOW", "A-PENDING", "A-LATERAL"]
    assert rows[0]["probability_mean"] == pytest.approx(0.95)
    assert rows[-2]["decision"] == "pending" and rows[-2]["delivery"] == "-"
    assert rows[-1]["decision"] == "skipped"
    assert all(r["patient_name"] is None and r["patient_id"] is None for r in rows)

    assert main(["worklist", "--db-url", db_url]) == 0
    table = capsys.readouterr().out
    assert "A-SUSP-HIGH" in table and "0.950 ± 0.050" in table and "sent 1/1" in table
    assert "DOE^" not in table and "PID" not in table

    assert main(["worklist", "--db-url", db_url, "--show-phi", "--decision", "suspected"]) == 0
    shown = capsys.readouterr().out
    assert "DOE^A-SUSP-HIGH / PID3" in shown and "A-LOW" not in shown

    assert main(["worklist", "--db-url", db_url, "--json", "--since", "35m"]) == 0
    recent = {r["accession_number"] for r in json.loads(capsys.readouterr().out)}
    assert recent == {"A-INDET", "A-SUSP-HIGH", "A-PENDING", "A-LATERAL"}


def test_worklist_bad_since(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["worklist", "--db-url", "sqlite://", "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err
