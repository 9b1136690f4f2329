"""The result image (Secondary Capture): heatmap, burned-in text, headers, dciodvfy.

A tiny random-weight ResNet-50 ensemble (tests/worker/conftest.py) gives the heatmap; the
pixels and headers are checked as written, the file with dicom3tools' ``dciodvfy``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tests.delivery.conftest import SHARED_DICOM, require_tool
from tests.support import dicomgen
from tests.support.result_images import colour_fraction
from tests.worker.conftest import build_ensemble, load_cpu
from training.preprocessing import load_unit_image
from worker.report.heatmap import ensemble_cam, fold_cam
from worker.report.identity import model_identity
from worker.report.result_image import (
    CAUTION,
    ImageFinding,
    Placement,
    image_series_number,
    make_result_image,
    result_lines,
    series_description,
    wanted,
)
from worker.score.cam import as_rows
from worker.score.decision import Decision, Priority
from worker.score.ensemble import Ensemble
from worker.settings import ResultImageMode

SUSPECTED = ImageFinding(Decision.SUSPECTED, Priority.HIGH, 0.873, 0.041, 2, 0.5)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    torch.set_num_threads(1)
    return load_cpu(build_ensemble(tmp_path_factory.mktemp("ri") / "model", threshold=0.5),
                    backend="torch", precision="fp32")


def _make(ensemble: Ensemble, source: Path, folder: Path,
          finding: ImageFinding = SUSPECTED) -> Dataset:
    header = dcmread(source, stop_before_pixels=True, force=True)
    placement = Placement(generate_uid(), generate_uid(), image_series_number(9901))
    written = make_result_image(source, header, finding, model_identity(ensemble.manifest),
                                ensemble, placement, folder, manufacturer="cxr-triage tests")
    assert written.path.parent == folder and written.series_number == 10901
    return dcmread(written.path)


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_the_image_is_a_valid_secondary_capture_in_the_study(
        ensemble: Ensemble, tmp_path: Path) -> None:
    source_ds = dicomgen.radiograph()
    source = dicomgen.write(source_ds, tmp_path / "source.dcm")
    image = _make(ensemble, source, tmp_path)
    assert _dciodvfy_errors(Path(image.filename)) == []
    assert image.SOPClassUID == SecondaryCaptureImageStorage
    assert image.StudyInstanceUID == source_ds.StudyInstanceUID
    assert image.SeriesInstanceUID != source_ds.SeriesInstanceUID
    assert image.PatientID == source_ds.PatientID and image.PatientName == source_ds.PatientName
    assert image.AccessionNumber == source_ds.AccessionNumber
    assert image.BurnedInAnnotation == "YES"
    assert image.SeriesDescription == "AI COVID-19 triage image: SUSPECTED - HIGH PRIORITY"
    assert image.SeriesNumber == 10901 and image.SeriesDate and image.SeriesTime
    assert image.ContentDate and image.ContentTime
    (reference,) = image.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source_ds.SOPClassUID
    device_uids = {str(e.get("DeviceUID", "")) for e in image.ContributingEquipmentSequence}
    assert model_identity(ensemble.manifest).device_uid in device_uids
    assert image.SoftwareVersions == ensemble.model_version
    assert "threshold 0.500" in image.ImageComments and "not for diagnostic use" in \
        image.ImageComments
    assert image.PhotometricInterpretation == "RGB" and max(image.Rows, image.Columns) == 1024
    assert image.Columns / image.Rows == pytest.approx(200 / 256, abs=0.01)  # aspect kept


def test_the_heatmap_colours_the_grey_radiograph(ensemble: Ensemble, tmp_path: Path) -> None:
    source = dicomgen.write(dicomgen.radiograph(), tmp_path / "source.dcm")
    pixels = _make(ensemble, source, tmp_path).pixel_array
    unit = load_unit_image(source)
    assert np.ptp(unit) > 0  # the source is a grey image with content...
    assert colour_fraction(pixels) > 0.05  # ...and the result image is coloured over it
    grey_unit = np.repeat((unit * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert colour_fraction(grey_unit) == 0.0


def test_a_study_not_assessed_gets_no_heatmap(ensemble: Ensemble, tmp_path: Path) -> None:
    source = dicomgen.write(dicomgen.radiograph(), tmp_path / "source.dcm")
    finding = ImageFinding(Decision.NOT_ASSESSABLE, Priority.ROUTINE, 0.3, 0.1, 2, 0.5)
    image = _make(ensemble, source, tmp_path, finding)
    assert colour_fraction(image.pixel_array) == 0.0
    assert image.SeriesDescription == "AI COVID-19 triage image: NOT ASSESSABLE - NO PRIORITY"
    assert "Probability" not in image.ImageComments
    assert _dciodvfy_errors(Path(image.filename)) == []


@pytest.mark.parametrize("name", ["fo-dicom_CR-MONO1-10-chest.dcm",
                                  "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904."
                                  "1517875201.850819.dcm"])
def test_real_radiographs_give_valid_images(ensemble: Ensemble, tmp_path: Path,
                                            name: str) -> None:
    image = _make(ensemble, SHARED_DICOM / name, tmp_path)
    assert _dciodvfy_errors(Path(image.filename)) == []
    assert colour_fraction(image.pixel_array) > 0.02


def test_the_burned_in_text_names_every_value() -> None:
    lines = result_lines(SUSPECTED)
    assert lines[0] == "COVID-19 triage: SUSPECTED - HIGH PRIORITY"
    assert lines[1] == "Probability 0.873 (threshold 0.500)"
    assert lines[2] == "Fold spread: SD 0.041 across 2 folds"
    assert CAUTION == "AI triage aid \u2014 not for diagnostic use"


def test_series_descriptions_fit_and_say_the_revision() -> None:
    for decision in Decision:
        for revision in (1, 2, 99):
            finding = ImageFinding(decision, Priority.ROUTINE, 0.1, 0.0, 10, 0.5, revision)
            text = series_description(finding)
            assert len(text) <= 64 and ("rev" in text) == (revision > 1), text


@pytest.mark.parametrize(("mode", "expected"), [
    ("all", {d: True for d in Decision}),
    ("flagged", {Decision.SUSPECTED: True, Decision.INDETERMINATE: True,
                 Decision.NOT_SUSPECTED: False, Decision.NOT_ASSESSABLE: False}),
    ("off", {d: False for d in Decision}),
])
def test_which_studies_get_an_image(mode: str, expected: dict[Decision, bool]) -> None:
    assert {d: wanted(ResultImageMode(mode), d) for d in Decision} == expected


def test_the_heatmap_is_the_librarys_grad_cam_averaged_over_folds(ensemble: Ensemble) -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 64, 64)
    positive = ensemble.manifest.positive_index
    plain = []
    for model in ensemble.models:  # the library alone, with weight gradients
        cam = GradCAM(model=model, target_layers=[model.layer4])  # type: ignore[arg-type]
        plain.append(cam(input_tensor=x[None], targets=[ClassifierOutputTarget(positive)])[0])
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    ours = ensemble_cam(ensemble.models, x, positive)
    np.testing.assert_allclose(ours, np.mean(plain, axis=0), atol=1e-5)
    assert ours.max() > 0
    assert fold_cam(ensemble.models[0], x[None], positive).shape == (64, 64)
    for model in ensemble.models:  # no weight gradient left behind, flags as they were
        assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_the_scoring_pass_yields_the_librarys_grad_cam(ensemble: Ensemble) -> None:
    """The map recorded with the score (no backward pass, no second forward) is the library's
    Grad-CAM averaged over the folds, once stretched to the input."""
    torch.manual_seed(5)
    x = torch.randn(3, 128, 128)
    prediction = ensemble.predict(x[None])
    assert prediction.cams is not None and prediction.cams.shape == (1, 4, 4)
    stored = np.asarray(as_rows(prediction.cams[0]), dtype=np.float32)
    stretched = cv2.resize(stored, (128, 128))  # the library's own resize
    library = ensemble_cam(ensemble.models, x, ensemble.manifest.positive_index)
    assert library.max() > 0
    # within 1 % of the range: the library scales each fold's map to [0, 1] again after its
    # resize, whose samples miss the grid's extreme cells by a fraction of a cell
    np.testing.assert_allclose(stretched, library, atol=1e-2)
    assert float(np.corrcoef(stretched.ravel(), library.ravel())[0, 1]) > 0.999


def test_a_bf16_heatmap_is_the_fp32_heatmap_within_a_few_percent(ensemble: Ensemble) -> None:
    torch.manual_seed(4)
    x = torch.randn(3, 64, 64)
    positive = ensemble.manifest.positive_index
    exact = ensemble_cam(ensemble.models, x, positive)
    fast = ensemble_cam(ensemble.models, x, positive, bf16=True)
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert float(np.abs(fast - exact).max()) < 0.05
