"""Surviving outages: a hung destination beside live C-STORE and STOW-RS ones (Orthanc with its
DICOMweb plugin), a PACS down and back, the retry horizon, ``deliveries --failing`` and
``redeliver --all-failed --destination``; and every channel wired (C-STORE with Storage
Commitment, STOW-RS, HL7 to an MLLP listener); on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.cli import main
from db.models import Delivery, DeliveryItem, DeliveryState, Instance, Report, utcnow
from db.reports import (
    DeliveryTargetRow,
    add_deliveries,
    failing_destinations,
    report_deliveries,
)
from tests.support.mllp_listener import MllpListener
from tests.support.orthanc import DicomWeb, OrthancServer
from tests.support.servers import SilentServer
from tests.worker.conftest import AddInstance, delivery_opts, report_opts, scoring_options
from tests.worker.fakes import FixedPredictor
from worker.deliver.channels import channel_sender, commitment_hook
from worker.deliver.delivery import DeliveryOptions, DeliveryResult, deliver_report
from worker.deliver.destinations import AnyDestination, parse_destinations
from worker.report.identity import ModelIdentity
from worker.report.study import report_study
from worker.score.live import score_instances

CALLING_AE = "CXR_TRIAGE"
IDENTITY = ModelIdentity("tiny", "fixed-v1", "ab" * 32, not_for_clinical_use=True)
SECONDARY_CAPTURE = ("torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201."
                     "850819.dcm")
WORKERS = 2  # TRIAGE_DELIVER_CONCURRENCY's default


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc", allowed_callers=(CALLING_AE,),
                       dicomweb=DicomWeb()) as server:
        yield server


def _options(**changes: object) -> DeliveryOptions:
    base = delivery_opts(calling_ae=CALLING_AE, connect_timeout_s=2.0, timeout_s=2.0,
                         backoff_s=60.0, backoff_max_s=60.0, jitter=0.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _reports(sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path,
             destinations: tuple[AnyDestination, ...], count: int) -> list[int]:
    """``count`` studies of one image each, scored and reported to ``destinations``."""
    predictor = FixedPredictor()
    ids = []
    for _ in range(count):
        instance = add_instance(generate_uid())
        with sessions() as session:
            row = session.get(Instance, instance)
            assert row is not None
            predictor.probabilities[row.file_path] = 0.9
        score_instances(sessions, instance, f"t{instance}", lambda: predictor, scoring_options())
        outcome = report_study(sessions, row.study_id, identity=IDENTITY,
                               model_version="fixed-v1", destinations=destinations,
                               options=report_opts(tmp_path / "sr", quiet_s=0),
                               now=utcnow() + dt.timedelta(seconds=5))
        assert outcome.report_id is not None
        ids.append(outcome.report_id)
    return ids


def _rows(sessions: sessionmaker[Session], label: str) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).where(Delivery.destination == label)
                                    .order_by(Delivery.report_id)))


def _deliver(sessions: sessionmaker[Session], destinations: tuple[AnyDestination, ...],
             options: DeliveryOptions, report_id: int, label: str,
             item: DeliveryItem = DeliveryItem.SR) -> DeliveryResult:
    return deliver_report(sessions, report_id, label, destinations={d.label: d for d in
                                                                     destinations},
                          send=channel_sender(sessions, options), options=options, item=item)


def test_a_hung_destination_does_not_hold_up_the_others(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path,
        orthanc: OrthancServer, shared_dicom: Path) -> None:
    with SilentServer() as hung:
        destinations = parse_destinations(
            f"HUNG@127.0.0.1:{hung.port}, ORTHANC@127.0.0.1:{orthanc.dicom_port}, "
            f"stow+{orthanc.dicomweb_url}")
        dead, pacs, stow = (d.label for d in destinations)
        reports = _reports(sessions, add_instance, tmp_path, destinations, 4)
        # The result image of one report, over STOW-RS (docs/operations.md, channels).
        image = Path(shutil.copy(shared_dicom / SECONDARY_CAPTURE, tmp_path / "image.dcm"))
        with sessions.begin() as session:
            report = session.get(Report, reports[0])
            assert report is not None
            report.image_file_path = str(image)
            add_deliveries(session, reports[0], [DeliveryTargetRow(stow, False,
                                                                   DeliveryItem.IMAGE)])
        jobs = [(r, dead, DeliveryItem.SR) for r in reports]  # the worst order: dead first
        jobs += [(r, label, DeliveryItem.SR) for r in reports for label in (pacs, stow)]
        jobs.append((reports[0], stow, DeliveryItem.IMAGE))
        options = _options()
        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(lambda job: _deliver(sessions, destinations, options, *job),
                                    jobs))
        connections = hung.accepted
    assert all(r.state is DeliveryState.SENT for r in results[len(reports):])
    assert len(orthanc.instances()) == len(reports) + 1  # each SR (twice), and the image
    dead_rows = _rows(sessions, dead)
    assert {d.state for d in dead_rows} == {DeliveryState.RETRYING}
    assert all(d.next_attempt_at is not None and d.failing_since is not None for d in dead_rows)
    # One attempt per worker at most, not one per delivery: the rest waits for the next one.
    tried = [d for d in dead_rows if d.attempts]
    assert 1 <= len(tried) <= WORKERS and connections == len(tried)
    waiting = [d for d in dead_rows if not d.attempts]
    assert waiting and all("not tried: HUNG@" in (d.last_error or "") for d in waiting)
    assert all("no association" in (d.last_error or "") for d in tried)


def test_pacs_down_then_back_releases_the_waiting_deliveries(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path,
        orthanc: OrthancServer) -> None:
    destinations = parse_destinations(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    (pacs,) = (d.label for d in destinations)
    first, *others = _reports(sessions, add_instance, tmp_path, destinations, 3)
    orthanc.stop()
    options = _options()
    held = _deliver(sessions, destinations, options, first, pacs)
    assert held.state is DeliveryState.RETRYING and held.retry_in_s == 60
    waiting = [_deliver(sessions, destinations, options, r, pacs) for r in others]
    assert all(w.state is DeliveryState.RETRYING and w.attempts == 0 for w in waiting)
    assert all(w.retry_in_s is not None and w.retry_in_s <= 60 for w in waiting)
    with sessions() as session:
        (failing,) = failing_destinations(session)
    assert (failing.destination, failing.retrying, failing.failed) == (pacs, 3, 0)
    assert failing.next_attempt_at is not None

    orthanc.start()
    sent = _deliver(sessions, destinations, options, first, pacs)  # its retry, early
    assert sent.state is DeliveryState.SENT
    assert {(k.report_id, k.destination) for k in sent.released} == {(r, pacs) for r in others}
    for key in sent.released:  # the task publishes them; they are due now
        assert _deliver(sessions, destinations, options, key.report_id,
                        key.destination).state is DeliveryState.SENT
    assert len(orthanc.instances()) == 3
    with sessions() as session:
        assert failing_destinations(session) == []
    assert all(d.failing_since is None for d in _rows(sessions, pacs))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_after_the_horizon_failed_then_redelivered_to_one_destination(
        sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path,
        orthanc: OrthancServer, db_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    orthanc.stop()
    destinations = parse_destinations(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}, "
                                      f"stow+{orthanc.dicomweb_url}")
    pacs, stow = (d.label for d in destinations)
    (report,) = _reports(sessions, add_instance, tmp_path, destinations, 1)
    options = _options(retry_horizon_s=0.0)  # no retry at all
    for label in (pacs, stow):
        result = _deliver(sessions, destinations, options, report, label)
        assert result.state is DeliveryState.FAILED and "gave up after 1 attempts" in result.reason
    monkeypatch.setenv("TRIAGE_DB_URL", db_url)
    monkeypatch.setenv("TRIAGE_BROKER_URL", "filesystem://")
    monkeypatch.setenv("TRIAGE_BROKER_DIR", str(tmp_path / "broker"))
    monkeypatch.setenv("TRIAGE_DESTINATION_ALERT_S", "3600")
    assert main(["deliveries", "--failing"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("DESTINATION\tFAILING SINCE (UTC)\tFOR\tALERT")
    assert sorted(line.split("\t")[0] for line in listed[1:]) == sorted([pacs, stow])
    assert all(line.split("\t")[3] == "no" and line.split("\t")[5] == "1" for line in listed[1:])
    monkeypatch.setenv("TRIAGE_DESTINATION_ALERT_S", "0")
    assert main(["deliveries", "--failing"]) == 0
    assert all(line.split("\t")[3] == "yes" for line in capsys.readouterr().out.splitlines()[1:])

    orthanc.start()
    assert main(["redeliver", "--all-failed", "--destination", stow]) == 0
    assert capsys.readouterr().out.strip() == f"report {report} -> {stow} (sr): queued again"
    assert [d.state for d in _rows(sessions, pacs)] == [DeliveryState.FAILED]
    (requeued,) = _rows(sessions, stow)
    assert requeued.state == DeliveryState.PENDING and requeued.failing_since is None
    assert _deliver(sessions, destinations, options, report, stow).state is DeliveryState.SENT
    assert main(["redeliver", "--all-failed", "--destination", "NOWHERE@h:1"]) == 0
    assert "nothing to redeliver" in capsys.readouterr().out


def test_every_channel_is_wired(sessions: sessionmaker[Session], add_instance: AddInstance,
                                tmp_path: Path, orthanc: OrthancServer) -> None:
    """The worker's sender and commitment hook reach C-STORE (with ``;commit``), STOW-RS and
    HL7 (a real MLLP listener) for one report."""
    with MllpListener(tmp_path / "ris") as ris:
        destinations = parse_destinations(
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port};commit, stow+{orthanc.dicomweb_url}, "
            f"hl7://127.0.0.1:{ris.port}")
        (report,) = _reports(sessions, add_instance, tmp_path, destinations, 1)
        options = _options()
        targets = {d.label: d for d in destinations}
        with sessions() as session:
            recorded = report_deliveries(session, report)
        assert [item for _, item in recorded] == [DeliveryItem.SR, DeliveryItem.SR,
                                                  DeliveryItem.HL7]
        waiting = dataclasses.replace(options, commitment_wait_s=0.5)
        for label, item in recorded:
            result = deliver_report(sessions, report, label, destinations=targets,
                                    send=channel_sender(sessions, options), options=options,
                                    item=item,
                                    commit=commitment_hook(sessions, waiting))
            assert result.state is DeliveryState.SENT, result.reason
        (message,) = ris.received()
    assert "ORU^R01" in message["message"]
    cstore = _rows(sessions, destinations[0].label)[0]
    assert cstore.commitment is not None and cstore.commitment_uid  # asked for (PS3.4 J.3)
    assert all(d.commitment is None for d in _rows(sessions, destinations[1].label))
    assert len(orthanc.instances()) == 1  # the same SR over C-STORE and STOW-RS
