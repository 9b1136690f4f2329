"""The SR headers as a PACS indexes them: a study, a revision with a changed decision and a
re-score by a second model, each sent to a real Orthanc and read back over its REST API."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Report, utcnow
from tests.support.orthanc import OrthancServer
from tests.worker.conftest import (  # noqa: F401  (fixtures)
    AddInstance,
    add_instance,
    report_opts,
    scoring_options,
    sessions,
)
from tests.worker.fakes import FixedPredictor
from worker.deliver.cstore import OutcomeKind, send_file
from worker.deliver.destinations import Destination, parse_destinations
from worker.report.identity import ModelIdentity
from worker.report.study import ReportAction, ReportOptions, report_study
from worker.score.live import score_instances

MODEL_A = ModelIdentity("tiny", "fixed-v1", "ab" * 32)
MODEL_B = ModelIdentity("tiny", "fixed-v2", "cd" * 32)
CALLING_AE = "CXR_TRIAGE"


def _score(factory: sessionmaker[Session], predictor: FixedPredictor, instance_id: int,
           p: float) -> None:
    with factory() as session:
        path = session.get(Instance, instance_id).file_path  # type: ignore[union-attr]
    predictor.probabilities[path] = p
    score_instances(factory, instance_id, f"t{instance_id}-{p}", lambda: predictor,
                    scoring_options())


def _report(factory: sessionmaker[Session], study_id: int, model: ModelIdentity,
            options: ReportOptions, supersedes: Report | None = None) -> ReportAction:
    return report_study(factory, study_id, identity=model, model_version=model.version,
                        destinations=[], options=options, supersedes=supersedes,
                        now=utcnow() + dt.timedelta(seconds=5)).action


def _reports(factory: sessionmaker[Session]) -> list[Report]:
    with factory() as session:
        return list(session.scalars(select(Report).order_by(Report.id)))


def _series(orthanc: OrthancServer, sop_uid: str) -> dict[str, Any]:
    """Orthanc's series resource of the stored instance ``sop_uid``."""
    instance = orthanc.find_instance(sop_uid)
    assert instance is not None, f"{sop_uid} is not in Orthanc"
    series = orthanc.get(f"/instances/{instance}")["ParentSeries"]
    return dict(orthanc.get(f"/series/{series}"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_revision_is_a_series_told_apart_in_the_pacs(
    sessions: sessionmaker[Session],  # noqa: F811  (the imported fixture)
    add_instance: AddInstance,  # noqa: F811
    tmp_path: Path,
) -> None:
    options = report_opts(tmp_path / "sr", quiet_s=0)
    study_uid = generate_uid()
    first = add_instance(study_uid, seed=1)
    with sessions() as session:
        study_id = session.get(Instance, first).study_id  # type: ignore[union-attr]

    # Model A: not suspected; then a late image it finds suspected (a changed decision).
    model_a = FixedPredictor(threshold=0.5, version=MODEL_A.version)
    _score(sessions, model_a, first, 0.2)
    assert _report(sessions, study_id, MODEL_A, options) is ReportAction.WRITTEN
    late = add_instance(study_uid, seed=2)
    _score(sessions, model_a, late, 0.9)
    assert _report(sessions, study_id, MODEL_A, options) is ReportAction.WRITTEN
    # Model B re-scores the study (its images go back to be scored first) and finds it normal.
    model_b = FixedPredictor(threshold=0.95, version=MODEL_B.version)
    assert _report(sessions, study_id, MODEL_B, options) is ReportAction.WAIT
    for instance_id in (first, late):
        _score(sessions, model_b, instance_id, 0.3)
    supersedes = _reports(sessions)[-1]
    assert _report(sessions, study_id, MODEL_B, options, supersedes) is ReportAction.WRITTEN
    reports = _reports(sessions)
    assert [r.model_version for r in reports] == ["fixed-v1", "fixed-v1", "fixed-v2"]

    with OrthancServer(tmp_path / "orthanc", allowed_callers=(CALLING_AE,)) as orthanc:
        (pacs,) = parse_destinations(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
        assert isinstance(pacs, Destination)
        for report in reports:
            outcome = send_file(Path(report.file_path), pacs, calling_ae=CALLING_AE)
            assert outcome.kind is OutcomeKind.SENT, outcome
        series = [_series(orthanc, r.sr_sop_instance_uid) for r in reports]

    assert len({s["ParentStudy"] for s in series}) == 1  # one study ...
    assert len({s["ID"] for s in series}) == 3  # ... three series
    tags = [s["MainDicomTags"] for s in series]
    assert [t["SeriesInstanceUID"] for t in tags] == [r.sr_series_instance_uid for r in reports]
    assert [t["SeriesNumber"] for t in tags] == ["9901", "9902", "9903"]
    assert [r.sr_series_number for r in reports] == [9901, 9902, 9903]
    assert [t["SeriesDescription"] for t in tags] == [
        "AI COVID-19 triage: NOT SUSPECTED - ROUTINE",
        "AI COVID-19 triage rev 2: SUSPECTED - HIGH PRIORITY",
        "AI COVID-19 triage rev 3: NOT SUSPECTED - ROUTINE",
    ]
    written = [(t["SeriesDate"], t["SeriesTime"]) for t in tags]
    assert all(date and time for date, time in written)
    assert written == sorted(written) and len(set(written)) == 3  # the newest sorts last
    # Each revision still names the one it supersedes.
    for earlier, later in itertools.pairwise(reports):
        (predecessor,) = dcmread(later.file_path).PredecessorDocumentsSequence
        ref = predecessor.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == earlier.sr_series_instance_uid
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            earlier.sr_sop_instance_uid)
