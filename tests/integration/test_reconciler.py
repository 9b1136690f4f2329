"""The reconciler against a real database and a real broker: overdue work is published again.

Every case runs on SQLite and PostgreSQL. Messages go through kombu's filesystem transport, so
the test reads exactly what a worker would receive; a Redis port nobody listens on is a broker
that is down.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.queues import BrokerSettings, make_celery
from db.migrate import upgrade
from db.models import (
    Decision,
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Priority,
    Report,
    ScoreClaim,
    Study,
    utcnow,
)
from db.recovery import (
    ReportFailure,
    record_report_failure,
    report_state,
    schedule_reports,
    settle_report,
)
from db.session import make_engine, make_session_factory
from dicom_node.enqueue import Enqueuer
from dicom_node.reconcile import CeleryDoorbell, Reconciler, ReconcileSettings
from tests.support.servers import free_port

LEASE = ReconcileSettings(interval_s=1.0, received_after_s=60.0, lease_s=600.0)
LONG_AGO = dt.timedelta(hours=2)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


class Broker:
    """A filesystem broker folder and what has been published to it."""

    def __init__(self, folder: Path) -> None:
        self.settings = BrokerSettings(url="filesystem://", filesystem_dir=folder)
        self.doorbell = CeleryDoorbell(make_celery(self.settings))
        self._seen: set[str] = set()

    def new_messages(self) -> list[tuple[str, list[object]]]:
        """(task name, args) of each message published since the last call."""
        found = []
        for path in sorted((self.settings.filesystem_dir / "queue").iterdir()):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            message = json.loads(path.read_text())
            args = json.loads(base64.b64decode(message["body"]))[0]
            found.append((message["headers"]["task"], args))
        return sorted(found, key=repr)


def _reconciler(sessions: sessionmaker[Session], broker: Broker,
                settings: ReconcileSettings = LEASE) -> Reconciler:
    enqueuer = Enqueuer(broker.doorbell.score, sessions, settings.lease_s)
    return Reconciler(broker.doorbell, sessions, settings, enqueuer.publish_now)


def _study(session: Session, name: str, due: dt.datetime | None = None) -> Study:
    now = utcnow()
    study = Study(study_instance_uid=f"1.2.826.0.1.{abs(hash(name)) % 10**9}",
                  accession_number=name, first_received_at=now - LONG_AGO,
                  last_received_at=now - LONG_AGO, report_due_at=due)
    session.add(study)
    session.flush()
    return study


def _instance(session: Session, study: Study, name: str, status: InstanceStatus, *,
              enqueued_ago: dt.timedelta | None = None,
              claimed_ago: dt.timedelta | None = None) -> int:
    now = utcnow()
    instance = Instance(
        sop_instance_uid=f"{study.study_instance_uid}.{name}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_id=study.id,
        series_instance_uid=f"{study.study_instance_uid}.9", calling_ae="CR1",
        received_at=now - LONG_AGO, updated_at=now - LONG_AGO, file_path="/x", size_bytes=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64, status=status,
        receive_count=1, enqueue_count=1,
        enqueued_at=None if enqueued_ago is None else now - enqueued_ago)
    session.add(instance)
    session.flush()
    if claimed_ago is not None:
        session.add(ScoreClaim(instance_id=instance.id, token="dead-task",
                               claimed_at=now - claimed_ago))
    return instance.id


def _delivery(session: Session, study: Study, source: int, destination: str,
              state: DeliveryState, next_attempt_in: dt.timedelta | None) -> int:
    report = session.scalars(select(Report).where(Report.study_id == study.id)).first()
    if report is None:
        report = Report(
            study_id=study.id, model_version="m1", revision=1, decision=Decision.SUSPECTED,
            priority=Priority.HIGH, probability_mean=0.9, probability_std=0.01,
            source_instance_id=source, scored_instance_count=1,
            sr_study_instance_uid=study.study_instance_uid,
            sr_series_instance_uid=f"{study.study_instance_uid}.77",
            sr_sop_instance_uid=f"{study.study_instance_uid}.78", file_path="/sr",
            worker_host="h")
        session.add(report)
        session.flush()
    session.add(Delivery(report_id=report.id, destination=destination, state=state, attempts=1,
                         next_attempt_at=None if next_attempt_in is None
                         else utcnow() + next_attempt_in))
    return report.id


def test_overdue_work_is_published_again_once(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    with sessions.begin() as session:
        old = _study(session, "OLD")
        received = _instance(session, old, "1", InstanceStatus.RECEIVED)
        queued_long = _instance(session, old, "2", InstanceStatus.QUEUED, enqueued_ago=LONG_AGO)
        _instance(session, old, "3", InstanceStatus.QUEUED, enqueued_ago=dt.timedelta(seconds=5))
        dead_claim = _instance(session, old, "4", InstanceStatus.SCORING, enqueued_ago=LONG_AGO,
                               claimed_ago=LONG_AGO)
        _instance(session, old, "5", InstanceStatus.SCORING, enqueued_ago=LONG_AGO,
                  claimed_ago=dt.timedelta(seconds=5))  # a live claim: being scored
        overdue = _study(session, "OVERDUE", due=utcnow() - LONG_AGO)
        _study(session, "LATER", due=utcnow() + LONG_AGO)
        failed = _study(session, "GIVEN-UP")
        failed.report_failed_at, failed.report_error = utcnow(), "report: SRError"
        sent = _instance(session, overdue, "1", InstanceStatus.SCORED)
        report = _delivery(session, overdue, sent, "PACS@h:1", DeliveryState.PENDING, -LONG_AGO)
        _delivery(session, overdue, sent, "BACKOFF@h:1", DeliveryState.RETRYING, LONG_AGO)
        _delivery(session, overdue, sent, "DONE@h:1", DeliveryState.SENT, None)
        overdue_id = overdue.id
    reconciler = _reconciler(sessions, broker)

    counts = reconciler.run_once()
    assert (counts.received, counts.claims, counts.reports, counts.deliveries) == (1, 2, 1, 1)
    assert broker.new_messages() == sorted([
        ("cxr_triage.score_instance", [received]),
        ("cxr_triage.score_instance", [queued_long]),
        ("cxr_triage.score_instance", [dead_claim]),
        ("cxr_triage.report_study", [overdue_id]),
        ("cxr_triage.deliver_report", [report, "PACS@h:1", "sr"]),
    ], key=repr)
    with sessions() as session:
        statuses = dict(session.execute(select(Instance.id, Instance.status)).all())
        assert statuses[received] is InstanceStatus.QUEUED
        # Each instance published makes its study's report due within the lease.
        old_due = session.scalar(select(Study.report_due_at).where(Study.accession_number == "OLD"))
        assert old_due is not None and old_due > utcnow()

    # Published again only when something changed, or after another lease.
    assert reconciler.run_once().total == 0 and broker.new_messages() == []
    with sessions.begin() as session:
        session.get(Study, overdue_id).report_due_at = utcnow() - LONG_AGO / 2  # type: ignore[union-attr]
    assert reconciler.run_once().reports == 1
    assert broker.new_messages() == [("cxr_triage.report_study", [overdue_id])]


def test_a_broker_outage_leaves_everything_due(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with sessions.begin() as session:
        study = _study(session, "S", due=utcnow() - LONG_AGO)
        stuck = _instance(session, study, "1", InstanceStatus.SCORING, enqueued_ago=LONG_AGO,
                          claimed_ago=LONG_AGO)
    down = BrokerSettings(url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.5)
    dead = Reconciler(CeleryDoorbell(make_celery(down)), sessions, LEASE, lambda _: None)
    counts = dead.run_once()
    assert counts.broker_down and counts.claims == 0 and counts.reports == 0

    broker = Broker(tmp_path / "broker")
    assert _reconciler(sessions, broker).run_once().total == 2
    assert broker.new_messages() == sorted([("cxr_triage.score_instance", [stuck]),
                                            ("cxr_triage.report_study", [study.id])], key=repr)


def test_a_report_task_clears_the_due_time_only_if_nothing_new_came(
        sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    with sessions.begin() as session:
        study_id = _study(session, "S").id
        schedule_reports(session, [study_id], now + dt.timedelta(seconds=30))
        schedule_reports(session, [study_id], now + dt.timedelta(seconds=60))  # keeps earlier
    with sessions() as session:
        state = report_state(session, study_id)
    assert state is not None
    assert (state.generation, state.attempts) == (2, 0)
    assert state.due_at == now + dt.timedelta(seconds=30)
    generation = state.generation
    with sessions.begin() as session:  # an image arrives while the report task runs ...
        schedule_reports(session, [study_id], now + dt.timedelta(seconds=90))
    with sessions.begin() as session:  # ... so the task's "done" must not clear the due time
        settle_report(session, study_id, generation)
    with sessions() as session:
        assert session.get(Study, study_id).report_due_at is not None  # type: ignore[union-attr]

    failure = ReportFailure("report attempt 1: SRError: x", None, now)
    with sessions.begin() as session:
        record_report_failure(session, study_id, generation, failure)  # stale generation
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.report_failed_at is None
        assert study.report_due_at is not None and study.report_attempts == 1
        current = report_state(session, study_id)
    assert current is not None
    with sessions.begin() as session:
        record_report_failure(session, study_id, current.generation, failure)  # for good
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.report_failed_at is not None
        assert study.report_due_at is None and study.report_error == failure.error
    with sessions.begin() as session:  # a new image: tried again, and this time reported
        schedule_reports(session, [study_id], now)
        latest = report_state(session, study_id)
        assert latest is not None and latest.generation == current.generation + 1
        settle_report(session, study_id, latest.generation)
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.report_failed_at is None
        assert study.report_due_at is None and study.report_error is None
        assert study.report_attempts == 0
