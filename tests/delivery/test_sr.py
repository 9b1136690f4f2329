"""The triage SR: built from real and generated headers, checked by dciodvfy, dsrdump, highdicom."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from tests.delivery.conftest import MODEL, require_tool, shared_image
from tests.support import dicomgen
from worker.report import codes as sr_codes
from worker.report.content import PredecessorRef, SRError, StudyFinding
from worker.report.identity import ModelIdentity
from worker.report.sr import DEFAULT_SERIES_NUMBER, build_triage_sr, write_sr
from worker.score.decision import Decision, Priority

FO_DICOM_CHEST = "fo-dicom_CR-MONO1-10-chest.dcm"  # no file meta, MONOCHROME1
CANON_DX = "pylibjpeg-data_966_fixed.dcm"  # DX with VR-violating patient values
EXPECTED_VALUE = {
    Decision.SUSPECTED: sr_codes.SUSPECTED,
    Decision.NOT_SUSPECTED: sr_codes.NOT_SUSPECTED,
    Decision.INDETERMINATE: sr_codes.INDETERMINATE,
    Decision.NOT_ASSESSABLE: sr_codes.NOT_ASSESSABLE,  # no priority, no probability
}


def _source(kind: str) -> Dataset:
    if kind == "generated":
        return dicomgen.radiograph(modality="DX")
    return shared_image(kind)


def _finding(source: Dataset, decision: Decision = Decision.SUSPECTED) -> StudyFinding:
    folds = (0.80, 0.86, 0.90, 0.84, 0.85)
    return StudyFinding(decision, 0.85, 0.0354, (str(source.SOPInstanceUID),), folds,
                        threshold=0.5)


def _text_values(ds: Dataset) -> list[str]:
    """Every TEXT content item's value, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        found += [str(item.TextValue)] if "TextValue" in item else []
        found += _text_values(item)
    return found


def _dciodvfy(path: Path) -> list[str]:
    run = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.parametrize("decision", list(Decision))
@pytest.mark.parametrize("source_kind", [FO_DICOM_CHEST, CANON_DX, "generated"])
def test_sr_is_valid_and_readable(tmp_path: Path, source_kind: str, decision: Decision) -> None:
    source = _source(source_kind)
    path = write_sr(
        build_triage_sr([source], _finding(source, decision), MODEL, manufacturer="tests"),
        tmp_path / "sr.dcm",
    )

    errors = [line for line in _dciodvfy(path) if line.startswith("Error")]
    assert errors == []

    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert '(840539006,SCT,"COVID-19")' in dump.stdout
    assert f'({EXPECTED_VALUE[decision].value},SCT,' in dump.stdout
    if decision is Decision.NOT_ASSESSABLE:
        assert '"Probability")' not in dump.stdout and '"Priority' not in dump.stdout
        assert '"Threshold Value")' not in dump.stdout
        assert any("not assessable: image unlike the training data" in text
                   for text in _text_values(pydicom.dcmread(path)))
    else:
        assert '"Probability")="0.85"' in dump.stdout
        assert '"Threshold Value")="0.5"' in dump.stdout
        assert '"Standard Deviation")="0.0354"' in dump.stdout
        assert '"Fold 5 probability")="0.85"' in dump.stdout
    assert "UNVERIFIED" in dump.stdout
    assert any("not verified" in text for text in _text_values(pydicom.dcmread(path)))


@pytest.mark.parametrize("decision", list(Decision))
def test_content_reads_back_with_highdicom(tmp_path: Path, decision: Decision) -> None:
    source = _source("generated")
    path = write_sr(
        build_triage_sr([source], _finding(source, decision), MODEL, manufacturer="tests"),
        tmp_path / "sr.dcm",
    )
    report: Any = hd.sr.srread(path).content  # the root of a TID 1500 report
    groups = report.get_image_measurement_groups()
    assert all(group.finding_type == sr_codes.COVID19 for group in groups)
    result = groups[0]  # the result comes first: decision and priority, no numbers
    values = {ev.name: ev.value for ev in result.get_qualitative_evaluations()}
    assert values[sr_codes.COVID19] == EXPECTED_VALUE[decision]
    assert result.get_measurements() == []
    assert [s.referenced_sop_instance_uid for s in result.source_images] == [
        source.SOPInstanceUID]
    if decision is Decision.NOT_ASSESSABLE:
        assert len(groups) == 1 and sr_codes.PRIORITY not in values
        return
    priority = Priority.HIGH if decision is Decision.SUSPECTED else Priority.ROUTINE
    expected_priority = sr_codes.HIGH_PRIORITY if priority is Priority.HIGH else (
        sr_codes.ROUTINE_PRIORITY
    )
    assert values[sr_codes.PRIORITY] == expected_priority
    summary, folds = groups[1:]
    named = [(m.name, m.value, m.derivation) for m in summary.get_measurements()]
    assert named == [(sr_codes.PROBABILITY, pytest.approx(0.85), sr_codes.MEAN),
                     (sr_codes.THRESHOLD, pytest.approx(0.5), None),
                     (sr_codes.STANDARD_DEVIATION, pytest.approx(0.0354), None)]
    assert [(m.name.meaning, m.value) for m in folds.get_measurements()] == [
        (f"Fold {n} probability", pytest.approx(p))
        for n, p in enumerate((0.80, 0.86, 0.90, 0.84, 0.85), start=1)]
    measurements = summary.get_measurements() + folds.get_measurements()
    assert all(m.unit == sr_codes.UNITLESS for m in measurements)
    versions = [item.TextValue for g in (summary, folds) for item in g[0].ContentSequence
                if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"]
    assert versions == [MODEL.version] * 2  # TID 4019 in both numeric groups


def test_patient_and_study_copied_with_new_series(tmp_path: Path) -> None:
    source = _source("generated")
    sr = build_triage_sr([source], _finding(source), MODEL, manufacturer="tests",
                         institution_name="Test Hospital")
    back = pydicom.dcmread(write_sr(sr, tmp_path / "sr.dcm"))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"):
        assert back[keyword].value == source[keyword].value, keyword
    assert back.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert back.SOPInstanceUID != source.SOPInstanceUID
    assert back.SOPClassUID == Comprehensive3DSRStorage
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.Modality == "SR"
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.CompletionFlag == "COMPLETE"
    assert back.SeriesNumber == DEFAULT_SERIES_NUMBER == 9901
    assert back.InstanceNumber == 1
    assert back.InstitutionName == "Test Hospital"
    assert back.SeriesDescription == "AI COVID-19 triage: SUSPECTED - HIGH PRIORITY"
    assert back.SeriesDate == back.ContentDate and back.SeriesTime == back.ContentTime
    assert back.ContentDate and back.ContentTime
    (scheme,) = back.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == sr_codes.LOCAL_SCHEME


def test_only_scored_images_are_referenced(tmp_path: Path) -> None:
    study = generate_uid()
    scored, lateral = (dicomgen.radiograph(study_uid=study) for _ in range(2))
    finding = StudyFinding(Decision.NOT_SUSPECTED, 0.1, 0.02, (scored.SOPInstanceUID,))
    back = pydicom.dcmread(write_sr(
        build_triage_sr([scored, lateral], finding, MODEL, manufacturer="tests"),
        tmp_path / "sr.dcm",
    ))
    (study_item,) = back.CurrentRequestedProcedureEvidenceSequence
    assert study_item.StudyInstanceUID == study
    refs = [i.ReferencedSOPInstanceUID
            for s in study_item.ReferencedSeriesSequence for i in s.ReferencedSOPSequence]
    assert refs == [scored.SOPInstanceUID]
    report: Any = hd.sr.Comprehensive3DSR.from_dataset(back).content
    sources = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for group in report.get_image_measurement_groups()
               for item in group[0].ContentSequence if item.ValueType == "IMAGE"]
    assert sources == [scored.SOPInstanceUID]
    assert lateral.SOPInstanceUID not in str(back)


def test_predecessor_documents_sequence(tmp_path: Path) -> None:
    source = _source("generated")
    old = PredecessorRef(source.StudyInstanceUID, generate_uid(), generate_uid())
    back = pydicom.dcmread(write_sr(
        build_triage_sr([source], _finding(source), MODEL, manufacturer="tests", predecessor=old),
        tmp_path / "sr.dcm",
    ))
    (study_item,) = back.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == old.study_instance_uid
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == old.series_instance_uid
    (instance,) = series_item.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == old.sop_instance_uid
    assert instance.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(
        write_sr(build_triage_sr([source], _finding(source), MODEL, manufacturer="t"),
                 tmp_path / "first.dcm")
    )


def test_model_in_contributing_equipment() -> None:
    source = _source("generated")
    sr = build_triage_sr([source], _finding(source), MODEL, manufacturer="cxr-triage project")
    # highdicom lists itself and the source's acquisition equipment too.
    (item,) = [item for item in sr.ContributingEquipmentSequence if "DeviceUID" in item]
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == (
        codes.DCM.ProcessingEquipment.value
    )
    assert item.DeviceUID == MODEL.device_uid
    assert item.Manufacturer == "cxr-triage project"
    assert item.ManufacturerModelName == MODEL.algorithm_name
    assert item.SoftwareVersions == MODEL.version
    retrained = ModelIdentity(MODEL.algorithm_name, MODEL.version, "f" * 64)
    assert retrained.device_uid != MODEL.device_uid
    assert ModelIdentity("cxr-triage", "0.1.0", "0" * 64).device_uid == MODEL.device_uid
    assert pydicom.uid.UID(MODEL.device_uid).is_valid


def test_not_for_clinical_use_is_stated(tmp_path: Path) -> None:
    source = _source("generated")
    research = ModelIdentity("cxr-triage", "0.1.0-dev", "abc", not_for_clinical_use=True)
    path = write_sr(build_triage_sr([source], _finding(source), research, manufacturer="t"),
                    tmp_path / "sr.dcm")
    back = pydicom.dcmread(path)
    assert back.SeriesDescription == "AI COVID-19 triage: SUSPECTED - HIGH PRIORITY - RESEARCH"
    assert "NOT FOR CLINICAL USE - not verified" in _text_values(back)
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True)
    assert '"Algorithm Parameters")="NOT FOR CLINICAL USE"' in dump.stdout


def test_invalid_patient_values_blanked_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    source = dicomgen.radiograph()
    source.PatientName = "SECRETSINGLENAME"  # one component: highdicom would log it
    source.PatientBirthDate = "d14a028c2a3a"  # a hash, as in real de-identified data
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # pydicom itself warns about the value assigned above
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sr = build_triage_sr([source], _finding(source), MODEL, manufacturer="tests")
    assert sr.PatientBirthDate in ("", None)
    assert sr.PatientID == dicomgen.PATIENT_ID
    for secret in ("SECRETSINGLENAME", dicomgen.PATIENT_ID, "d14a028c2a3a"):
        assert secret not in caplog.text
        assert all(secret not in str(w.message) for w in caught)
    assert "PatientBirthDate" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decision": "maybe"}, "unknown decision"),
        ({"probability_mean": 1.5}, "probability_mean"),
        ({"probability_std": float("nan")}, "probability_std"),
        ({"scored_sop_instance_uids": ()}, "at least one"),
    ],
)
def test_finding_validation(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "decision": "suspected", "probability_mean": 0.5, "probability_std": 0.1,
        "scored_sop_instance_uids": ("1.2.3",),
    }
    with pytest.raises(SRError, match=message):
        StudyFinding(**{**values, **kwargs})  # type: ignore[arg-type]


def test_sources_must_match_finding() -> None:
    source = _source("generated")
    other_study = dicomgen.radiograph()
    with pytest.raises(SRError, match="not among the sources"):
        build_triage_sr([source], StudyFinding(Decision.SUSPECTED, 0.9, 0.0, ("1.2.3",)), MODEL,
                        manufacturer="t")
    with pytest.raises(SRError, match="studies"):
        build_triage_sr([source, other_study], _finding(source), MODEL, manufacturer="t")


def test_write_sr_is_atomic_and_checked(tmp_path: Path) -> None:
    source = _source("generated")
    sr = build_triage_sr([source], _finding(source), MODEL, manufacturer="tests")
    target = tmp_path / "out" / "sr.dcm"
    target.parent.mkdir()
    write_sr(sr, target)
    write_sr(sr, target)  # overwriting is fine
    assert sorted(p.name for p in target.parent.iterdir()) == ["sr.dcm"]
    assert pydicom.dcmread(target).file_meta.TransferSyntaxUID.is_little_endian
    with pytest.raises(SRError, match="cannot write"):
        write_sr(sr, tmp_path / "missing-dir" / "sr.dcm")
