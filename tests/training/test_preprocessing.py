"""The shared preprocessing: DICOM and PNG of one image give one tensor; DICOM grey pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.training.conftest import gradient_png
from training.errors import TrainingError
from training.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    load_unit_image,
    preprocess,
    to_model_tensor,
)


def dicom_from_pixels(pixels: np.ndarray, path: Path, **attrs: object) -> Path:
    """Write a minimal Secondary Capture DICOM holding ``pixels`` (8 or 16 bit)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def png_and_pixels(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "image.png"
    return path, gradient_png(path, seed=1, size=(90, 70))


@pytest.mark.parametrize("size", [None, 32])
def test_dicom_monochrome2_equals_png(png_and_pixels: tuple[Path, np.ndarray], tmp_path: Path,
                                      size: int | None) -> None:
    png, pixels = png_and_pixels
    dcm = dicom_from_pixels(pixels, tmp_path / "m2.dcm")
    a, b = load_unit_image(png, size=size), load_unit_image(dcm, size=size)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(to_model_tensor(a, size=48), to_model_tensor(b, size=48),
                               atol=1e-5)


def test_monochrome1_is_inverted_back(png_and_pixels: tuple[Path, np.ndarray],
                                      tmp_path: Path) -> None:
    png, pixels = png_and_pixels
    dcm = dicom_from_pixels(255 - pixels, tmp_path / "m1.dcm",
                            PhotometricInterpretation="MONOCHROME1")
    config = PreprocessConfig(size=40)
    torch.testing.assert_close(preprocess(png, config), preprocess(dcm, config),
                               atol=1e-5, rtol=0)


def test_presentation_lut_inverse_inverts_once(png_and_pixels: tuple[Path, np.ndarray],
                                               tmp_path: Path) -> None:
    png, pixels = png_and_pixels
    expected = load_unit_image(png)
    m2_inverse = dicom_from_pixels(255 - pixels, tmp_path / "a.dcm", PresentationLUTShape="INVERSE")
    m1_inverse = dicom_from_pixels(255 - pixels, tmp_path / "b.dcm",
                                   PhotometricInterpretation="MONOCHROME1",
                                   PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(load_unit_image(m2_inverse), expected, atol=1e-6)
    np.testing.assert_allclose(load_unit_image(m1_inverse), expected, atol=1e-6)


def test_rescale_and_window_map_window_to_unit_range(tmp_path: Path) -> None:
    # 12-bit ramp; slope 2 / intercept -1000 then a window covering output -1000..7190.
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    path = dicom_from_pixels(stored, tmp_path / "w.dcm", RescaleSlope=2, RescaleIntercept=-1000,
                             WindowCenter=3095, WindowWidth=8191)
    unit = load_unit_image(path)
    assert unit.min() == pytest.approx(0.0, abs=1e-3)
    assert unit.max() == pytest.approx(4080 / 4095, abs=1e-3)
    assert np.all(np.diff(unit[0]) > 0)  # monotonic: brighter stored value, brighter output
    # Resizing before windowing agrees with resizing after, inside the window.
    small = load_unit_image(path, size=16)
    assert small.shape == (16, 16)
    np.testing.assert_allclose(small, to_model_tensor(unit, size=16, mean=(0, 0, 0),
                                                      std=(1, 1, 1))[0].numpy(), atol=2e-3)


def test_shared_dicoms_decode_to_unit_range(shared_data: Path) -> None:
    files = sorted((shared_data / "dicom").glob("*.dcm"))
    assert len(files) == 8
    for path in files:
        unit = load_unit_image(path, size=64)
        assert unit.shape == (64, 64) and unit.dtype == np.float32
        assert np.isfinite(unit).all() and unit.min() >= 0.0 and unit.max() <= 1.0
        assert unit.std() > 0.05, f"{path.name} came out nearly flat"


def test_monochrome1_chest_has_dark_lungs(shared_data: Path) -> None:
    # MONOCHROME1 stores air bright; after inversion the lung fields must be darker than bone.
    ds = dcmread(shared_data / "dicom" / "fo-dicom_CR-MONO1-10-chest.dcm", force=True)
    unit = load_unit_image(ds, size=64)
    lungs = unit[20:40, 12:24].mean()
    spine_and_edge = unit[:, 30:34].mean()
    assert lungs < spine_and_edge


def test_config_round_trip_feeds_to_model_tensor() -> None:
    config = PreprocessConfig(size=32, resize="area")
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    unit = np.full((50, 60), IMAGENET_MEAN[0], dtype=np.float32)
    tensor = to_model_tensor(unit, **config.to_dict())
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[0], torch.zeros(32, 32), atol=1e-6)
    expected = (IMAGENET_MEAN[0] - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(tensor[2], torch.full((32, 32), expected), atol=1e-5)
    with pytest.raises(TrainingError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({**config.to_dict(), "gamma": 2})


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(TrainingError, match=r"broken\.png"):
        load_unit_image(bad)
    not_dicom = tmp_path / "noise.dcm"
    not_dicom.write_bytes(b"\x00" * 300)
    with pytest.raises(TrainingError, match=r"noise\.dcm"):
        load_unit_image(not_dicom)
