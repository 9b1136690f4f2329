"""Reduced-resolution JPEG 2000 decoding against full decoding, on real and generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid

from cxr_triage.synthetic import cr_dataset, radiograph
from training.decode import reduced_j2k, reduction_for
from training.preprocessing import dicom_unit_image


def test_reduction_keeps_the_smaller_side_above_the_input() -> None:
    assert reduction_for(2128, 2000, 224, levels=5) == 3  # 2000 -> 250
    assert reduction_for(2128, 2000, 224, levels=2) == 2  # capped by the codestream
    assert reduction_for(440, 440, 224, levels=5) == 0
    assert reduction_for(4000, 4000, 224, levels=6) == 4  # 4000 -> 250


def test_generated_j2k_reduced_matches_full(tmp_path: Path) -> None:
    pixels = (radiograph(np.random.default_rng(3), covid=True, size=1024) * 4095)
    ds = cr_dataset(pixels.astype(np.uint16), study_uid=generate_uid(),
                    series_uid=generate_uid(), accession="T")
    ds.compress(JPEG2000Lossless)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    reduced = reduced_j2k(dcmread(path), 224)
    assert reduced is not None and reduced.shape == (256, 256)
    assert reduced.max() <= 4095  # Pillow's 16-bit scaling undone
    fast = dicom_unit_image(dcmread(path), size=224)
    full = dicom_unit_image(dcmread(path), size=224, reduced_decode=False)
    assert fast.shape == full.shape == (224, 224)
    assert float(np.abs(fast - full).mean()) < 0.01


def test_real_dx_j2k(shared_dicom: Path) -> None:
    path = shared_dicom / "pylibjpeg-data_966_fixed.dcm"
    reduced = reduced_j2k(dcmread(path), 224)
    assert reduced is not None and reduced.shape == (266, 250)
    full_values = dcmread(path).pixel_array
    # the lowest level is a smoothed, subsampled image of the same stored values
    assert abs(float(reduced.mean()) - float(full_values.mean())) < 0.01 * float(full_values.max())
    fast = dicom_unit_image(dcmread(path), size=224)
    full = dicom_unit_image(dcmread(path), size=224, reduced_decode=False)
    assert float(np.abs(fast - full).mean()) < 0.02


@pytest.mark.parametrize("name", ["fo-dicom_CR-MONO1-10-chest.dcm",
                                  "dicom-test-files_RG2_JLSL.dcm"])
def test_other_syntaxes_are_decoded_in_full(shared_dicom: Path, name: str) -> None:
    assert reduced_j2k(dcmread(shared_dicom / name, force=True), 224) is None
