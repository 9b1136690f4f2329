"""The schema and repository on SQLite and on the running PostgreSQL."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from sqlalchemy import event, inspect, select, text, update
from sqlalchemy.exc import StatementError

from db.instances import (
    NewInstance,
    RecordOutcome,
    StudyFacts,
    mark_enqueued,
    record_instance,
    stale_received,
    study_state,
)
from db.migrate import current_revision, head_revision, upgrade
from db.models import Instance, InstanceStatus, Study, utcnow
from db.session import make_engine, make_session_factory


def _item(sop: str, study: str = "1.2.3", sha: str = "a" * 64) -> NewInstance:
    return NewInstance(
        study=StudyFacts(study_instance_uid=study, accession_number="ACC1", patient_id="P1"),
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        series_instance_uid=study + ".1",
        calling_ae="CR1",
        file_path=f"/s/{sop}.dcm",
        size_bytes=10,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        content_sha256=sha,
        modality="CR",
        body_part_examined="CHEST",
        view_position="PA",
        status=InstanceStatus.RECEIVED,
        status_reason=None,
    )


def test_migrations_create_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert current_revision(engine) == head_revision()
    inspector = inspect(engine)
    assert {"study", "instance", "alembic_version"} <= set(inspector.get_table_names())
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("instance")}
    assert ("study_id",) in indexed and ("status", "received_at") in indexed
    engine.dispose()


def test_record_is_idempotent_per_sop_instance(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        first = record_instance(session, _item("1.2.3.4"))
    with sessions.begin() as session:
        again = record_instance(session, _item("1.2.3.4"))
    with sessions.begin() as session:
        changed = record_instance(session, replace(_item("1.2.3.4"), content_sha256="b" * 64,
                                                   file_path="/s/new.dcm"))
    assert first.outcome is RecordOutcome.NEW
    assert again.outcome is RecordOutcome.DUPLICATE and again.instance_id == first.instance_id
    assert changed.outcome is RecordOutcome.CHANGED
    assert changed.previous_file_path == "/s/1.2.3.4.dcm"
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
        assert len(rows) == 1
        assert rows[0].receive_count == 3 and rows[0].file_path == "/s/new.dcm"
        assert session.scalars(select(Study)).one().accession_number == "ACC1"
    engine.dispose()


def test_concurrent_associations_record_once(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)

    def store(index: int) -> RecordOutcome:
        with sessions.begin() as session:
            return record_instance(session, _item(f"1.2.9.{index % 5}", study="1.2.9")).outcome

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(store, range(40)))
    assert outcomes.count(RecordOutcome.NEW) == 5
    with sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 5
        assert len(session.scalars(select(Study)).all()) == 1
    engine.dispose()


def test_study_state_is_one_query(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        for sop in ("1.5.1", "1.5.2", "1.5.3"):
            record_instance(session, _item(sop, study="1.5"))
        record_instance(session, _item("1.6.1", study="1.6"))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))
    with sessions() as session:
        state = study_state(session, "1.5")
        assert study_state(session, "9.9") is None
    assert state is not None
    assert state.study.study_instance_uid == "1.5"
    assert sorted(i.sop_instance_uid for i in state.instances) == ["1.5.1", "1.5.2", "1.5.3"]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
    engine.dispose()


def test_enqueue_and_sweeper_queries(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        a = record_instance(session, _item("1.7.1")).instance_id
        b = record_instance(session, _item("1.7.2")).instance_id
    later = utcnow() + dt.timedelta(seconds=5)
    with sessions() as session:
        assert stale_received(session, later) == [a, b]
        assert stale_received(session, utcnow() - dt.timedelta(hours=1)) == []
    with sessions.begin() as session:
        assert mark_enqueued(session, a) is True
        assert mark_enqueued(session, a) is False
    with sessions() as session:
        assert stale_received(session, later) == [b]
        row = session.get(Instance, a)
        assert row is not None and row.status == "queued" and row.enqueue_count == 1
        assert row.enqueued_at is not None and row.enqueued_at.tzinfo is not None
    engine.dispose()


def test_status_columns_read_back_as_enums_and_refuse_unknown_values(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        instance_id = record_instance(session, _item("1.8.1")).instance_id
        assert mark_enqueued(session, instance_id)
    with engine.connect() as conn:  # the stored value is the plain string it always was
        assert conn.execute(text("SELECT status FROM instance")).scalar_one() == "queued"
    with sessions() as session:
        row = session.get(Instance, instance_id)
        assert row is not None and row.status is InstanceStatus.QUEUED
    with pytest.raises(StatementError, match="not among the defined enum values"), \
            sessions.begin() as session:
        session.execute(update(Instance).values(status="lost"))
    engine.dispose()
