"""Lose nothing: each step after the store survives a SIGKILLed worker, a full SR disk and a
malformed header, because the database (not the broker) says what is due.

The process tests run the node (with its reconciler), ``cxr-triage worker`` and Orthanc as real
processes, on embedded defaults (SQLite, the filesystem broker) and on Redis + PostgreSQL, with
a short lease and sweep. A killed worker loses what it held: the filesystem broker had already
handed the message over, and Redis would give it back only after its visibility timeout (an
hour here), so only the reconciler brings the step back. The header tests drive the report step
in-process against SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.cli import main
from db.models import Delivery, DeliveryItem, DeliveryState, Instance, Report, Study, utcnow
from db.reports import requeue_deliveries
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.hooked_cli import HOLD_AFTER_CLAIM_S
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.support.services import ensure_postgres, fresh_postgres_database
from tests.worker.conftest import AddInstance, delivery_opts, report_opts, scoring_options
from tests.worker.fakes import FixedPredictor
from tests.worker.processes import WorkerProcess, query, wait_until
from worker.deliver.cstore import DeliveryOutcome, OutcomeKind
from worker.deliver.delivery import DeliveryResult, Outgoing, deliver_report
from worker.deliver.destinations import parse_destinations
from worker.report.identity import ModelIdentity
from worker.report.study import ReportAction, report_failed, report_step
from worker.score.live import score_instances

pytestmark = pytest.mark.integration
LOGGER = logging.getLogger(__name__)
CALLING_AE = "CXR_TRIAGE"
LEASE_S = 4
# Short lease and sweep for node and worker; the broker keeps a killed worker's message an hour.
RECOVERY = {"TRIAGE_SCORE_LEASE_S": str(LEASE_S), "TRIAGE_SWEEP_INTERVAL_S": "1",
            "TRIAGE_SWEEP_AFTER_S": "1", "TRIAGE_BROKER_VISIBILITY_TIMEOUT_S": "3600"}
WAIT_S = 180  # generous: 2 shared cores; the recovery itself takes lease + sweep


class RecoveryStack:
    """Node, Orthanc and workers on one database and broker, with the recovery settings."""

    def __init__(self, tmp_path: Path, db_url: str, broker_url: str, model_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.shared = {**RECOVERY, "TRIAGE_BROKER_DIR": str(tmp_path / "broker")}
        self.node = NodeProcess(tmp_path / "node", db_url, broker_url, env=self.shared).start()
        self.orthanc = OrthancServer(tmp_path / "orthanc", allowed_callers=(CALLING_AE,)).start()
        self.pacs = f"ORTHANC@127.0.0.1:{self.orthanc.dicom_port}"
        self.broker_url = broker_url
        self.model_dir = model_dir
        self.workers: list[WorkerProcess] = []

    def worker(self, env: Mapping[str, str] | None = None,
               hooks: Mapping[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess(
            self.tmp_path / f"worker{len(self.workers)}", db_url=self.db_url,
            broker_url=self.broker_url, model_dir=self.model_dir, storage_dir=self.node.storage,
            destinations=self.pacs,
            env={**self.shared, "TRIAGE_CALLING_AE": CALLING_AE, **(env or {})}, hooks=hooks)
        self.workers.append(process)
        return process.start()

    def send_study(self, name: str) -> str:
        files = dicomgen.write_series(self.tmp_path / name, 1)
        assert len(storescu(self.node.port, files).succeeded) == 1
        return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.db_url, sql)

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])

    def delivered(self) -> bool:
        return self.rows(f"SELECT state FROM delivery WHERE destination = '{self.pacs}'") == [
            ("sent",)]

    def logs(self) -> str:
        return "\n".join([self.node.log()[-4000:], *(w.log()[-6000:] for w in self.workers)])

    def close(self) -> None:
        for process in self.workers:
            process.stop()
        self.node.stop()
        self.orthanc.stop()


@pytest.fixture(params=["embedded", "servers"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database URL, broker URL): SQLite and the filesystem broker, or PostgreSQL and Redis."""
    if request.param == "embedded":
        yield f"sqlite:///{tmp_path / 'triage.db'}", "filesystem://"
        return
    ensure_postgres()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with fresh_postgres_database() as url:
            yield url, redis.url
    finally:
        redis.kill()


@pytest.fixture
def stack(tmp_path: Path, backend: tuple[str, str], tiny_ensemble: Path) -> Iterator[RecoveryStack]:
    built = RecoveryStack(tmp_path, *backend, tiny_ensemble)
    try:
        yield built
    finally:
        built.close()


def _recovered(stack: RecoveryStack, what: str) -> float:
    """Wait for the study to be reported and delivered once; seconds it took from now."""
    started = time.monotonic()
    wait_until(stack.delivered, WAIT_S, what, stack.logs)
    elapsed = time.monotonic() - started
    LOGGER.info("%s: %.1f s", what, elapsed)
    assert stack.count("report") == 1 and stack.count("score") == 1
    assert stack.rows("SELECT status FROM instance") == [("scored",)]
    assert len(stack.orthanc.instances()) == 1
    return elapsed


def test_worker_killed_while_scoring(stack: RecoveryStack) -> None:
    doomed = stack.worker(hooks={HOLD_AFTER_CLAIM_S: "600"})
    stack.send_study("study")
    wait_until(lambda: stack.rows("SELECT status FROM instance") == [("scoring",)], WAIT_S,
               "the worker to claim the instance", stack.logs)
    doomed.kill()  # main process and pool children
    assert stack.count("score") == 0
    stack.worker()
    _recovered(stack, "the claimed instance to be scored, reported and delivered")


def test_worker_killed_after_scoring_inside_the_quiet_window(stack: RecoveryStack) -> None:
    quiet = {"TRIAGE_STUDY_QUIET_S": "20"}
    doomed = stack.worker(quiet)
    stack.send_study("study")
    wait_until(lambda: stack.count("score") == 1, WAIT_S, "the image to be scored", stack.logs)
    doomed.kill()  # the report's countdown message dies with it
    assert stack.count("report") == 0
    stack.worker(quiet)
    _recovered(stack, "the scored study to be reported and delivered")


def test_worker_killed_during_a_delivery_backoff(stack: RecoveryStack) -> None:
    stack.orthanc.stop()
    backoff = {"TRIAGE_DELIVERY_BACKOFF_S": "5", "TRIAGE_DELIVERY_BACKOFF_MAX_S": "5"}
    doomed = stack.worker(backoff)
    stack.send_study("study")
    wait_until(lambda: stack.rows(
        f"SELECT state FROM delivery WHERE destination = '{stack.pacs}'") == [("retrying",)],
        WAIT_S, "the delivery to back off while the PACS is down", stack.logs)
    doomed.kill()  # the retry's countdown message dies with it
    stack.orthanc.start()
    stack.worker(backoff)
    _recovered(stack, "the delivery to be retried after the restart")


def _fill(disk: Path) -> Path:
    """Write one file until the file system is full; deleting it frees the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


@pytest.fixture
def sr_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs for the SR directory: a disk that really fills up."""
    mount_point = tmp_path / "sr-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                   check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_sr_directory_full_then_freed(stack: RecoveryStack, sr_disk: Path) -> None:
    filler = _fill(sr_disk)
    stack.worker({"TRIAGE_SR_DIR": str(sr_disk / "sr")})
    stack.send_study("study")

    def retrying() -> bool:
        rows = stack.rows("SELECT report_attempts, report_error FROM study")
        return bool(rows) and int(rows[0][0]) >= 2 and "No space" in str(rows[0][1])

    wait_until(retrying, WAIT_S, "the report to be retried on the full disk", stack.logs)
    listing = subprocess.run(
        [sys.executable, "-m", "cxr_triage", "worklist", "--json", "--db-url", stack.db_url],
        capture_output=True, text=True, env=stack.workers[0].env)
    (row,) = json.loads(listing.stdout)
    assert row["decision"] == "retrying" and "No space left on device" in row["reason"]
    filler.unlink()
    _recovered(stack, "the report to be written and delivered once space is free")
    assert stack.rows("SELECT report_attempts, report_error, report_due_at FROM study") == [
        (0, None, None)]


# --- The report step on malformed and unreadable headers (in-process, SQLite and PostgreSQL) ---

IDENTITY = ModelIdentity("tiny", "fixed-v1", "ab" * 32, not_for_clinical_use=True)
DESTINATIONS = parse_destinations("PACS@127.0.0.1:11999")


def _scored_study(sessions: sessionmaker[Session], add_instance: AddInstance,
                  path: Path | None = None) -> tuple[int, Path]:
    instance_id = add_instance(generate_uid(), path=path)
    with sessions() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        study_id, file_path = instance.study_id, Path(instance.file_path)
    predictor = FixedPredictor()
    predictor.probabilities[str(file_path)] = 0.8
    assert score_instances(sessions, instance_id, "t", lambda: predictor,
                           scoring_options()).scored == (instance_id,)
    return study_id, file_path


def _report(sessions: sessionmaker[Session], study_id: int, tmp_path: Path) -> ReportAction:
    options = report_opts(tmp_path / "sr", quiet_s=0, retry_backoff_s=1)
    return report_step(sessions, study_id, identity=IDENTITY, model_version="fixed-v1",
                       destinations=DESTINATIONS, options=options).action


def _study(sessions: sessionmaker[Session], study_id: int) -> Study:
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study


def test_a_malformed_header_is_reported_from_the_recorded_facts(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path) -> None:
    # An unknown character set: highdicom refuses to copy it, so the SR used to fail silently.
    image = dicomgen.radiograph()
    image.SpecificCharacterSet = "ISO_IR 100"
    source = dicomgen.write(image, tmp_path / "in" / "bad-charset.dcm")
    source.write_bytes(source.read_bytes().replace(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100",
                                                   b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 999"))
    study_id, _ = _scored_study(sessions, add_instance, source)
    assert _report(sessions, study_id, tmp_path) is ReportAction.WRITTEN
    with sessions() as session:
        report = session.scalars(select(Report)).one()
    sr = dcmread(report.file_path)
    assert sr.PatientID == "PID" and sr.AccessionNumber == "ACC1"  # as the node recorded them
    assert sr.get("SpecificCharacterSet") in (None, "", "ISO_IR 192")
    assert _study(sessions, study_id).report_due_at is None


def test_an_unreadable_header_fails_with_its_reason_in_the_worklist(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path,
        db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    study_id, path = _scored_study(sessions, add_instance)
    path.write_bytes(b"\x00not a DICOM header\xff" * 64)  # damaged after it was scored
    assert _report(sessions, study_id, tmp_path) is ReportAction.FAILED
    study = _study(sessions, study_id)
    assert study.report_failed_at is not None and study.report_due_at is None
    assert study.report_error is not None and "Rows, Columns" in study.report_error

    assert main(["worklist", "--db-url", db_url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["decision"] == "failed" and "Rows, Columns" in row["reason"]
    assert main(["worklist", "--db-url", db_url]) == 0
    assert "failed" in capsys.readouterr().out


def test_a_missing_image_file_is_retried_then_reported(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path) -> None:
    study_id, path = _scored_study(sessions, add_instance)
    hidden = path.rename(path.with_suffix(".away"))  # the storage is not mounted
    assert _report(sessions, study_id, tmp_path) is ReportAction.RETRY
    study = _study(sessions, study_id)
    assert study.report_attempts == 1 and study.report_due_at is not None
    assert study.report_failed_at is None and "is the storage mounted" in (study.report_error or "")
    hidden.rename(path)
    assert _report(sessions, study_id, tmp_path) is ReportAction.WRITTEN
    study = _study(sessions, study_id)
    assert (study.report_attempts, study.report_error, study.report_due_at) == (0, None, None)


class RaisingSender:
    """A sender that raises what it is given (a full disk, a bug), then sends."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, outgoing: Outgoing) -> DeliveryOutcome:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return DeliveryOutcome(OutcomeKind.SENT, "sent", destination=outgoing.destination.label)


def test_whatever_a_delivery_raises_is_recorded(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path) -> None:
    study_id, _ = _scored_study(sessions, add_instance)
    assert _report(sessions, study_id, tmp_path) is ReportAction.WRITTEN
    with sessions() as session:
        report_id = session.scalars(select(Report.id)).one()
    targets = {d.label: d for d in DESTINATIONS}
    options = delivery_opts(backoff_s=30, backoff_max_s=30, lease_s=60, jitter=0.0)
    sender = RaisingSender(OSError(28, "No space left on device"), ValueError("a bug"))

    def attempt(only_when_due: bool = True) -> DeliveryResult:
        return deliver_report(sessions, report_id, "PACS@127.0.0.1:11999", destinations=targets,
                              send=sender, options=options, only_when_due=only_when_due)

    def row() -> Delivery:
        with sessions() as session:
            return session.scalars(select(Delivery)).one()

    first = attempt()
    assert first.state is DeliveryState.RETRYING and first.retry_in_s == 30
    retrying = row()
    assert retrying.next_attempt_at is not None and "No space left" in (retrying.last_error or "")
    assert attempt().reason == "not due yet" and sender.calls == 1  # a duplicate message
    with sessions.begin() as session:  # `redeliver --all-failed` takes overdue retries too
        session.scalars(select(Delivery)).one().next_attempt_at = utcnow()
        assert requeue_deliveries(session, all_failed=True) == [
            (report_id, retrying.destination, DeliveryItem.SR)]
    second = attempt()
    assert second.state is DeliveryState.FAILED and sender.calls == 2
    assert row().last_error == "ValueError (unexpected; the worker log says where)"
    assert row().next_attempt_at is None


def test_a_report_that_cannot_start_is_recorded(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path) -> None:
    study_id, _ = _scored_study(sessions, add_instance)
    options = report_opts(tmp_path / "sr", retry_backoff_s=1)
    missing = FileNotFoundError(2, "No such file or directory", "model/ensemble.json")
    assert report_failed(sessions, study_id, missing, options).action is ReportAction.RETRY
    study = _study(sessions, study_id)
    assert study.report_attempts == 1 and "ensemble.json" in (study.report_error or "")
