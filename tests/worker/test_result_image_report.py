"""Reports with a result image: ``TRIAGE_RESULT_IMAGE``, its deliveries, and losing nothing.

Images are scored by tiny random-weight ensembles (threshold 0: every image suspected;
threshold 1: none), which also give the heatmap, so the report's ensemble is the real one.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Delivery, DeliveryItem, Instance, Report, Score, utcnow
from tests.worker.conftest import AddInstance, build_ensemble, load_cpu, report_opts
from tests.worker.fakes import RecordingSender
from worker.deliver.cstore import OutcomeKind
from worker.deliver.delivery import deliver_report
from worker.deliver.destinations import parse_destinations
from worker.report.identity import model_identity
from worker.report.study import EnsembleSource, ReportAction, ReportOptions, report_study
from worker.rescore.report import write_reports
from worker.runtime import delivery_options
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions, score_instances
from worker.settings import ResultImageMode, WorkerSettings

DESTINATIONS = parse_destinations("PACS@127.0.0.1:11999,SHADOW@127.0.0.1:11998;shadow")
PACS, SHADOW = (d.label for d in DESTINATIONS)
# Random folds disagree: a wide indeterminate band keeps the decisions exact.
SCORING = ScoringOptions.from_settings(WorkerSettings(indeterminate_std=1.0), "test-host")
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _load(directory: Path, threshold: float, seed: int = 0) -> Ensemble:
    torch.set_num_threads(1)
    return load_cpu(build_ensemble(directory, threshold=threshold, seed=seed),
                    backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def suspecting(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    """Every image suspected (threshold 0)."""
    return _load(tmp_path_factory.mktemp("suspecting") / "model", 0.0)


@pytest.fixture(scope="module")
def clearing(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    """No image suspected (threshold 1)."""
    return _load(tmp_path_factory.mktemp("clearing") / "model", 1.0, seed=1)  # other weights


def _options(tmp_path: Path, mode: ResultImageMode) -> ReportOptions:
    return report_opts(tmp_path / "sr", quiet_s=0.0, max_wait_s=60.0, result_image=mode)


def _scored_study(sessions: sessionmaker[Session], add_instance: AddInstance,
                  ensemble: Ensemble, *, with_cam: bool = True) -> int:
    """A study with one scored image; ``with_cam=False``: its score has no recorded Grad-CAM
    (scored before the scoring pass kept one), so the report runs Grad-CAM itself."""
    instance = add_instance(generate_uid())
    assert score_instances(sessions, instance, "t", lambda: ensemble, SCORING).claimed
    with sessions.begin() as session:
        if not with_cam:
            session.execute(update(Score).where(Score.instance_id == instance).values(cam=None))
        return session.get(Instance, instance).study_id  # type: ignore[union-attr]


def _report(sessions: sessionmaker[Session], study_id: int, ensemble: Ensemble,
            options: ReportOptions, source: EnsembleSource | None = None) -> Report:
    outcome = report_study(
        sessions, study_id, identity=model_identity(ensemble.manifest),
        model_version=ensemble.model_version, destinations=DESTINATIONS, options=options,
        now=utcnow() + dt.timedelta(seconds=1), ensemble=source or (lambda: ensemble))
    assert outcome.action is ReportAction.WRITTEN
    with sessions() as session:
        report = session.get(Report, outcome.report_id)
        assert report is not None
        return report


def _items(sessions: sessionmaker[Session], report_id: int) -> set[tuple[str, DeliveryItem]]:
    with sessions() as session:
        return {(d.destination, DeliveryItem(d.item)) for d in session.scalars(
            select(Delivery).where(Delivery.report_id == report_id))}


def _has_image(report: Report) -> bool:
    columns = (report.image_file_path, report.image_sop_instance_uid,
               report.image_series_instance_uid, report.image_series_number)
    assert len({c is None for c in columns}) == 1, columns  # all or none
    return report.image_file_path is not None


def test_a_suspected_study_gets_an_image_beside_the_sr_with_its_own_deliveries(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        tmp_path: Path) -> None:
    study = _scored_study(sessions, add_instance, suspecting)
    report = _report(sessions, study, suspecting, _options(tmp_path, ResultImageMode.FLAGGED))
    assert _has_image(report)
    image_path = Path(report.image_file_path or "")
    assert image_path.parent == Path(report.file_path).parent  # the SR's folder
    image, sr = dcmread(image_path), dcmread(report.file_path)
    assert image.SOPClassUID == SecondaryCaptureImageStorage
    assert image.SOPInstanceUID == report.image_sop_instance_uid
    assert image.StudyInstanceUID == sr.StudyInstanceUID
    assert image.SeriesInstanceUID == report.image_series_instance_uid != sr.SeriesInstanceUID
    assert (sr.SeriesNumber, image.SeriesNumber) == (9901, report.image_series_number) == (
        9901, 10901)
    with sessions() as session:
        source = session.get(Instance, report.source_instance_id)
        assert source is not None
        assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
    assert _items(sessions, report.id) == {
        (PACS, DeliveryItem.SR), (PACS, DeliveryItem.IMAGE),
        (SHADOW, DeliveryItem.SR), (SHADOW, DeliveryItem.IMAGE)}


@pytest.mark.parametrize(("mode", "suspected", "expected"), [
    (ResultImageMode.FLAGGED, False, False),  # the default: normal studies cost nothing
    (ResultImageMode.ALL, False, True),
    (ResultImageMode.OFF, True, False),
])
def test_the_setting_chooses_which_studies_get_an_image(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        clearing: Ensemble, tmp_path: Path, mode: ResultImageMode, suspected: bool,
        expected: bool) -> None:
    ensemble = suspecting if suspected else clearing
    study = _scored_study(sessions, add_instance, ensemble)
    report = _report(sessions, study, ensemble, _options(tmp_path, mode))
    assert report.decision == ("suspected" if suspected else "not_suspected")
    assert _has_image(report) is expected
    items = {item for _, item in _items(sessions, report.id)}
    assert items == ({DeliveryItem.SR, DeliveryItem.IMAGE} if expected else {DeliveryItem.SR})
    assert len(list((tmp_path / "sr").rglob("*.dcm"))) == (2 if expected else 1)


def test_an_image_that_fails_leaves_the_sr_and_its_deliveries(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Ensemble:
        raise RuntimeError("heatmap exploded")

    study = _scored_study(sessions, add_instance, suspecting, with_cam=False)
    with caplog.at_level(logging.WARNING, logger="worker.report.study"):
        report = _report(sessions, study, suspecting,
                         _options(tmp_path, ResultImageMode.ALL), source=broken)
    assert not _has_image(report)
    assert Path(report.file_path).exists()
    assert _items(sessions, report.id) == {(PACS, DeliveryItem.SR), (SHADOW, DeliveryItem.SR)}
    assert "no result image (RuntimeError" in caplog.text
    assert list((tmp_path / "sr").rglob("*.dcm")) == [Path(report.file_path)]


def test_an_ensemble_of_another_version_makes_no_image(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        clearing: Ensemble, tmp_path: Path) -> None:
    assert clearing.model_version != suspecting.model_version
    study = _scored_study(sessions, add_instance, suspecting, with_cam=False)
    report = _report(sessions, study, suspecting, _options(tmp_path, ResultImageMode.ALL),
                     source=lambda: clearing)
    assert not _has_image(report)


def test_the_recorded_grad_cam_needs_no_models_at_report_time(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        tmp_path: Path) -> None:
    def unused() -> Ensemble:
        raise AssertionError("the report loaded the models although the score has its CAM")

    study = _scored_study(sessions, add_instance, suspecting)
    with sessions() as session:
        cams = list(session.scalars(select(Score.cam).join(Instance).where(
            Instance.study_id == study)))
    assert cams and all(cam is not None and len(cam) > 0 for cam in cams)
    report = _report(sessions, study, suspecting, _options(tmp_path, ResultImageMode.ALL),
                     source=unused)
    assert _has_image(report)


def test_the_image_has_a_delivery_state_of_its_own(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        tmp_path: Path) -> None:
    study = _scored_study(sessions, add_instance, suspecting)
    report = _report(sessions, study, suspecting, _options(tmp_path, ResultImageMode.FLAGGED))
    sender = RecordingSender(OutcomeKind.SENT, OutcomeKind.FAILED)
    options = delivery_options(WorkerSettings())
    targets = {d.label: d for d in DESTINATIONS}
    states = {}
    for item in (DeliveryItem.SR, DeliveryItem.IMAGE):
        result = deliver_report(sessions, report.id, PACS, destinations=targets, send=sender,
                                options=options, item=item)
        states[item] = result.state.value if result.state else None
    assert states == {DeliveryItem.SR: "sent", DeliveryItem.IMAGE: "failed"}
    assert [Path(p).name for p, _ in sender.calls] == [
        Path(report.file_path).name, Path(report.image_file_path or "").name]


def test_rescoring_writes_the_image_the_same_way(
        sessions: sessionmaker[Session], add_instance: AddInstance, suspecting: Ensemble,
        tmp_path: Path) -> None:
    study = _scored_study(sessions, add_instance, suspecting)
    options = _options(tmp_path, ResultImageMode.FLAGGED)
    summary = write_reports(sessions, [study], identity=model_identity(suspecting.manifest),
                            model_version=suspecting.model_version, destinations=DESTINATIONS,
                            options=options, ensemble=lambda: suspecting)
    ((_, report_id),) = summary.written
    with sessions() as session:
        report = session.get(Report, report_id)
        assert report is not None and _has_image(report)
    assert (PACS, DeliveryItem.IMAGE) in _items(sessions, report_id)
