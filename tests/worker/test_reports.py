"""Study reports and deliveries on SQLite and PostgreSQL, with exact predictor outputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.instances import mark_enqueued
from db.models import Delivery, DeliveryItem, Instance, Report, utcnow
from db.reports import requeue_deliveries
from tests.delivery.conftest import require_tool
from tests.support import dicomgen
from tests.worker.conftest import AddInstance, delivery_opts, report_opts, scoring_options
from tests.worker.fakes import FixedPredictor, RecordingSender
from worker.deliver.cstore import OutcomeKind
from worker.deliver.delivery import deliver_report
from worker.deliver.destinations import parse_destinations
from worker.report.identity import ModelIdentity
from worker.report.study import ReportAction, ReportOptions, report_study
from worker.score.live import score_instances

IDENTITY = ModelIdentity("tiny", "fixed-v1", "ab" * 32, not_for_clinical_use=True)
DESTINATIONS = parse_destinations("PACS@127.0.0.1:11999,SHADOW@127.0.0.1:11998;shadow")
PACS, SHADOW = (d.label for d in DESTINATIONS)
SCORING = scoring_options(indeterminate_std=0.3)


@pytest.fixture
def predictor() -> FixedPredictor:
    return FixedPredictor(threshold=0.5)


@pytest.fixture
def options(tmp_path: Path) -> ReportOptions:
    return report_opts(tmp_path / "sr", quiet_s=5.0, max_wait_s=60.0)


def _later(seconds: float = 30.0) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def _score(sessions: sessionmaker[Session], predictor: FixedPredictor, instance_id: int,
           p: float) -> None:
    with sessions() as session:
        path = session.get(Instance, instance_id).file_path  # type: ignore[union-attr]
    predictor.probabilities[path] = p
    assert score_instances(sessions, instance_id, f"t{instance_id}", lambda: predictor,
                           SCORING).claimed


def _report(sessions: sessionmaker[Session], study_id: int, options: ReportOptions,
            now: dt.datetime | None = None) -> ReportAction:
    outcome = report_study(sessions, study_id, identity=IDENTITY, model_version="fixed-v1",
                           destinations=DESTINATIONS, options=options, now=now or _later())
    return outcome.action


def _study_id(sessions: sessionmaker[Session], instance_id: int) -> int:
    with sessions() as session:
        return session.get(Instance, instance_id).study_id  # type: ignore[union-attr]


def _reports(sessions: sessionmaker[Session]) -> list[Report]:
    with sessions() as session:
        return list(session.scalars(select(Report).order_by(Report.revision)))


def _deliveries(sessions: sessionmaker[Session]) -> dict[tuple[int, str], Delivery]:
    with sessions() as session:
        return {(d.report_id, d.destination): d for d in session.scalars(select(Delivery))}


def test_quiet_study_gets_one_report_and_a_late_image_a_new_revision(
    sessions: sessionmaker[Session], add_instance: AddInstance, predictor: FixedPredictor,
    options: ReportOptions,
) -> None:
    study_uid = generate_uid()
    first = add_instance(study_uid, seed=1)
    study = _study_id(sessions, first)
    assert _report(sessions, study, options, now=utcnow()) is ReportAction.WAIT  # not quiet
    _score(sessions, predictor, first, 0.2)
    assert _report(sessions, study, options) is ReportAction.WRITTEN
    assert _report(sessions, study, options) is ReportAction.UNCHANGED  # idempotent

    late = add_instance(study_uid, seed=2)
    assert _report(sessions, study, options) is ReportAction.WAIT  # an unscored candidate
    _score(sessions, predictor, late, 0.9)
    assert _report(sessions, study, options) is ReportAction.WRITTEN

    rev1, rev2 = _reports(sessions)
    assert (rev1.revision, rev1.decision, rev1.priority) == (1, "not_suspected", "ROUTINE")
    assert (rev2.revision, rev2.decision, rev2.priority) == (2, "suspected", "HIGH")
    assert rev2.predecessor_id == rev1.id and rev2.source_instance_id == late
    assert rev2.probability_mean == pytest.approx(0.9) and rev2.scored_instance_count == 2
    # Each revision is a series of its own, numbered in the study's order of reports.
    assert rev2.sr_series_instance_uid != rev1.sr_series_instance_uid
    assert (rev1.sr_series_number, rev2.sr_series_number) == (9901, 9902)
    sr = dcmread(rev2.file_path)
    assert sr.SOPInstanceUID == rev2.sr_sop_instance_uid and sr.StudyInstanceUID == study_uid
    assert (sr.SeriesInstanceUID, sr.SeriesNumber) == (rev2.sr_series_instance_uid, 9902)
    assert sr.SeriesDescription == "AI COVID-19 triage rev 2: SUSPECTED - HIGH PRIORITY - RESEARCH"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        rev1.sr_sop_instance_uid)
    assert {k[1] for k in _deliveries(sessions)} == {PACS, SHADOW}
    assert {d.state for d in _deliveries(sessions).values()} == {"pending"}


def test_nothing_scored_means_no_report(
    sessions: sessionmaker[Session], add_instance: AddInstance, predictor: FixedPredictor,
    options: ReportOptions,
) -> None:
    instance = add_instance(generate_uid())
    score_instances(sessions, instance, "t", lambda: predictor, SCORING)  # no probability: fails
    assert _report(sessions, _study_id(sessions, instance), options) is (
        ReportAction.NOTHING_SCORED)


def test_priority_is_not_lowered_after_high_was_sent(
    sessions: sessionmaker[Session], add_instance: AddInstance, predictor: FixedPredictor,
    options: ReportOptions, tmp_path: Path,
) -> None:
    study_uid = generate_uid()
    first = add_instance(study_uid, seed=1)
    study = _study_id(sessions, first)
    _score(sessions, predictor, first, 0.95)
    _report(sessions, study, options)
    (rev1,) = _reports(sessions)
    sender = RecordingSender()
    delivery = delivery_opts()
    destinations = {d.label: d for d in DESTINATIONS}
    for label in (PACS, SHADOW):
        deliver_report(sessions, rev1.id, label, destinations=destinations, send=sender,
                       options=delivery)
    assert [d.state for d in _deliveries(sessions).values()] == ["sent", "shadow"]

    # The modality resends the image with other content, which now scores low.
    with sessions() as session:
        old = session.get(Instance, first)
        assert old is not None
    resent = dicomgen.radiograph(study_uid=study_uid, sop_uid=old.sop_instance_uid, seed=7)
    add_instance(study_uid, path=dicomgen.write(resent, tmp_path / "resent.dcm"))
    with sessions.begin() as session:
        mark_enqueued(session, first)
    _score(sessions, predictor, first, 0.1)
    assert _report(sessions, study, options) is ReportAction.WRITTEN
    rev2 = _reports(sessions)[1]
    assert rev2.priority == "ROUTINE"
    result = deliver_report(sessions, rev2.id, PACS, destinations=destinations, send=sender,
                            options=delivery)
    assert result.state is not None and result.state.value == "withheld"
    assert "priority is never lowered" in (_deliveries(sessions)[(rev2.id, PACS)].last_error or "")
    assert [label for _, label in sender.calls] == [PACS, SHADOW]  # rev2 never sent to PACS


def test_retries_then_failed_then_redelivered(
    sessions: sessionmaker[Session], add_instance: AddInstance, predictor: FixedPredictor,
    options: ReportOptions,
) -> None:
    instance = add_instance(generate_uid())
    _score(sessions, predictor, instance, 0.7)
    _report(sessions, _study_id(sessions, instance), options)
    (report,) = _reports(sessions)
    destinations = {d.label: d for d in DESTINATIONS}
    sender = RecordingSender(OutcomeKind.RETRY, OutcomeKind.RETRY, OutcomeKind.RETRY)
    delivery = delivery_opts(retry_horizon_s=3600, backoff_s=2, backoff_max_s=3, jitter=0.0)

    waits = []
    for attempt in range(3):
        if attempt == 2:  # the retry horizon (1 h) has passed since the first failure
            with sessions.begin() as session:
                row = session.scalars(select(Delivery)
                                      .where(Delivery.destination == PACS)).one()
                assert row.failing_since is not None
                row.failing_since = utcnow() - dt.timedelta(hours=2)
        result = deliver_report(sessions, report.id, PACS, destinations=destinations,
                                send=sender, options=delivery)
        waits.append(result.retry_in_s)
        row = _deliveries(sessions)[(report.id, PACS)]
        assert row.attempts == len(waits)
    assert waits == [2, 3, None]
    assert row.state == "failed" and "gave up after 3 attempts over 2.0 h" in (row.last_error or "")
    assert row.failing_since is not None
    # A failed delivery is final for a redelivered task ...
    deliver_report(sessions, report.id, PACS, destinations=destinations, send=sender,
                   options=delivery)
    assert len(sender.calls) == 3
    # ... until `cxr-triage redeliver` puts it back.
    with sessions.begin() as session:
        assert requeue_deliveries(session, all_failed=True) == [(report.id, PACS, DeliveryItem.SR)]
    result = deliver_report(sessions, report.id, PACS, destinations=destinations, send=sender,
                            options=delivery)
    assert result.state is not None and result.state.value == "sent"
    assert _deliveries(sessions)[(report.id, PACS)].attempts == 1
    # A destination no longer configured fails with a reason instead of retrying.
    result = deliver_report(sessions, report.id, SHADOW, destinations={}, send=sender,
                            options=delivery)
    assert result.state is not None and result.state.value == "failed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_pipeline_sr_validates_with_dciodvfy(
    sessions: sessionmaker[Session], add_instance: AddInstance, predictor: FixedPredictor,
    options: ReportOptions,
) -> None:
    study_uid = generate_uid()
    ids = [add_instance(study_uid, seed=i) for i in range(2)]
    with sessions() as session:
        for instance_id, p in zip(ids, (0.4, 0.45), strict=True):
            path = session.get(Instance, instance_id).file_path  # type: ignore[union-attr]
            predictor.probabilities[path] = p
    assert len(score_instances(sessions, ids[0], "t", lambda: predictor, SCORING).scored) == 2
    _report(sessions, _study_id(sessions, ids[0]), dataclasses.replace(options, quiet_s=0))
    (report,) = _reports(sessions)
    run = subprocess.run([require_tool("dciodvfy"), report.file_path], capture_output=True,
                         text=True)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    assert report.decision == "not_suspected" and report.source_instance_id == ids[1]
    dump = subprocess.run([require_tool("dsrdump"), report.file_path], capture_output=True,
                          text=True).stdout
    assert '"Probability")="0.45"' in dump  # the result's image ...
    assert '"Threshold Value")="0.5"' in dump  # ... against the threshold its score used
