"""The image gate in scoring and reporting: chest radiographs assessed, the rest not assessable.

The ensemble's gate statistics come from chest radiographs (tests/worker/gate_support.py); its
threshold 0 would call every assessed image ``suspected``, so a non-chest image that slipped
through the gate would show up as suspected and HIGH.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Decision, Instance, Priority, Report, Score, utcnow
from db.worklist import NOT_ASSESSABLE_REASON, WorklistRow, _sort_key
from tests.delivery.conftest import require_tool
from tests.worker.conftest import AddInstance, load_cpu, report_opts, scoring_options
from tests.worker.gate_support import (
    CHEST_FILES,
    DENTAL,
    HIP,
    as_plain_cr,
    build_gated_ensemble,
    without_body_part,
)
from worker.deliver.destinations import parse_destinations
from worker.report.identity import model_identity
from worker.report.study import ReportAction, report_study
from worker.score.decision import ImageResult, study_result
from worker.score.ensemble import Ensemble
from worker.score.live import score_instances

DESTINATIONS = parse_destinations("PACS@127.0.0.1:11999")


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return build_gated_ensemble(tmp_path_factory.mktemp("gated") / "model", shared_data)


@pytest.fixture(scope="module")
def ensemble(gated: Path) -> Ensemble:
    return load_cpu(gated)


def _refused(ensemble: Ensemble, paths: list[Path]) -> list[bool]:
    prediction = ensemble.predict(torch.stack([ensemble.preprocess(p) for p in paths]))
    assert len(prediction.gate_scores) == len(paths)
    return list(prediction.not_assessable)


def test_real_chest_files_stay_assessable_with_or_without_body_part(
    ensemble: Ensemble, shared_dicom: Path, tmp_path: Path,
) -> None:
    chests = [shared_dicom / name for name in CHEST_FILES]
    stripped = [without_body_part(p, tmp_path / p.name) for p in chests]
    assert _refused(ensemble, chests + stripped) == [False] * 10


def test_dental_and_hip_are_not_assessable(ensemble: Ensemble, shared_dicom: Path,
                                           tmp_path: Path) -> None:
    sources = [shared_dicom / DENTAL, shared_dicom / HIP]
    cleared = [without_body_part(p, tmp_path / p.name) for p in sources]
    plain = [as_plain_cr(p, tmp_path / f"plain-{p.name}") for p in sources]
    assert _refused(ensemble, sources + cleared + plain) == [True] * 6


def _sr_items(ds: Dataset) -> list[Dataset]:
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found += _sr_items(item)
    return found


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", [DENTAL, HIP])
def test_scored_and_reported_as_not_assessable_without_priority(
    name: str, gated: Path, ensemble: Ensemble, shared_dicom: Path, tmp_path: Path,
    sessions: sessionmaker[Session], add_instance: AddInstance,
) -> None:
    study_uid = generate_uid()
    path = as_plain_cr(shared_dicom / name, tmp_path / "storage" / "x.dcm", study_uid=study_uid)
    instance_id = add_instance(study_uid, path=path)
    options = scoring_options(indeterminate_std=0.3)
    assert score_instances(sessions, instance_id, "t", lambda: ensemble, options).claimed
    with sessions() as session:
        score = session.scalars(select(Score)).one()
        study_id = session.get(Instance, instance_id).study_id  # type: ignore[union-attr]
    assert score.decision == Decision.NOT_ASSESSABLE
    outcome = report_study(
        sessions, study_id, identity=model_identity(ensemble.manifest),
        model_version=ensemble.model_version, destinations=DESTINATIONS,
        options=report_opts(tmp_path / "reports", quiet_s=0),
        now=utcnow() + dt.timedelta(seconds=60))
    assert outcome.action is ReportAction.WRITTEN
    with sessions() as session:
        report = session.scalars(select(Report)).one()
    assert (report.decision, report.priority) == (Decision.NOT_ASSESSABLE, Priority.ROUTINE)
    sr = dcmread(report.file_path)
    items = _sr_items(sr)
    names = {i.ConceptNameCodeSequence[0].CodeMeaning for i in items
             if "ConceptNameCodeSequence" in i}
    assert "Priority" not in names and "Probability" not in names  # no claim at all
    codes = {(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning)
             for i in items if "ConceptCodeSequence" in i}
    assert ("373068000", "Undetermined") in codes
    assert "394849002" not in {value for value, _ in codes}  # never HIGH priority
    assert any("not assessable: image unlike the training data" in str(i.get("TextValue", ""))
               for i in items)
    run = subprocess.run([require_tool("dciodvfy"), report.file_path], capture_output=True,
                         text=True)
    assert [line for line in (run.stdout + run.stderr).splitlines()
            if line.startswith("Error")] == []


def test_manifest_without_statistics_scores_and_warns_once(
    tiny_ensemble: Path, shared_dicom: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.score.ensemble"):
        old = load_cpu(tiny_ensemble)
        batch = torch.stack([old.preprocess(shared_dicom / DENTAL)])
        first, second = old.predict(batch), old.predict(batch)
    warnings = [r for r in caplog.records if "not-assessable check is OFF" in r.getMessage()]
    assert len(warnings) == 1 and old.gate is None
    assert first.gate_scores == () and not first.unlike_training_data(0)
    assert second.mean == first.mean and first.mean[0] >= old.threshold  # scored as before


def test_bf16_path_gives_features_from_its_own_pass(gated: Path, ensemble: Ensemble,
                                                    shared_dicom: Path) -> None:
    fast = load_cpu(gated, precision="bf16")
    paths = [shared_dicom / CHEST_FILES[0], shared_dicom / DENTAL]
    batch = torch.stack([ensemble.preprocess(p) for p in paths])
    exact, approx = ensemble.predict(batch), fast.predict(batch)
    assert approx.not_assessable == exact.not_assessable == (False, True)
    assert approx.gate_scores == pytest.approx(exact.gate_scores, rel=0.1, abs=0.05)


def test_images_near_the_gate_threshold_are_decided_in_fp32(gated: Path, shared_dicom: Path,
                                                            tmp_path: Path) -> None:
    near = tmp_path / "near"
    shutil.copytree(gated, near)
    reference = load_cpu(near)
    batch = torch.stack([reference.preprocess(shared_dicom / CHEST_FILES[0])])
    manifest = json.loads((near / "ensemble.json").read_text())
    # the chest image sits just under the gate threshold: any approximation may flip it
    manifest["ood_gate"]["threshold"] = reference.predict(batch).gate_scores[0] * (1 + 1e-6)
    (near / "ensemble.json").write_text(json.dumps(manifest))
    exact = load_cpu(near).predict(batch)
    checked = load_cpu(near, precision="bf16", exact_margin=0.0, gate_margin=0.5)
    assert checked.predict(batch).gate_scores == exact.gate_scores  # fp32 decided: identical
    assert checked.rescored == 1
    rough = load_cpu(near, precision="bf16", exact_margin=0.0, gate_margin=0.0)
    assert rough.predict(batch).gate_scores != exact.gate_scores  # bf16 alone differs
    assert rough.rescored == 0


def _result(instance_id: int, decision: Decision, mean: float) -> ImageResult:
    return ImageResult(instance_id, f"1.2.{instance_id}", decision, mean, 0.0, (mean,))


def test_an_assessed_image_speaks_for_the_study() -> None:
    refused = _result(1, Decision.NOT_ASSESSABLE, 0.99)
    assert study_result([refused, _result(2, Decision.NOT_SUSPECTED, 0.1)]).instance_id == 2
    assert study_result([refused]).decision is Decision.NOT_ASSESSABLE


def test_worklist_lists_not_assessable_apart_after_indeterminate() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def row(uid: str, decision: str, mean: float | None, minutes: int) -> WorklistRow:
        return WorklistRow(uid, None, now + dt.timedelta(minutes=minutes), decision, mean,
                           0.0, "-", "v1")

    rows = [row("ns", "not_suspected", 0.1, 0), row("na", "not_assessable", None, 1),
            row("ind", "indeterminate", 0.4, 2), row("s", "suspected", 0.9, 3)]
    assert [r.study_instance_uid for r in sorted(rows, key=_sort_key)] == [
        "s", "ind", "na", "ns"]
    assert NOT_ASSESSABLE_REASON == "not assessable: image unlike the training data"

