"""Generated radiographs: valid CR/DX instances with synthetic pixels and recognisable PHI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

PATIENT_NAME = "TESTPATIENT^SECRET"
PATIENT_ID = "PID-SECRET-4711"


def radiograph(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    rows: int = 256,
    columns: int = 200,
    seed: int = 0,
    with_pixels: bool = True,
    accession: str = "ACC0001",
) -> Dataset:
    """A small, valid CR (or DX) image with 12-bit MONOCHROME2 pixels."""
    sop_class = ComputedRadiographyImageStorage if modality == "CR" else (
        DigitalXRayImageStorageForPresentation
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "cxr-triage tests"
    ds.PatientOrientation = ""
    if modality != "CR":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
    if with_pixels:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file with file meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(directory: Path, count: int, **kwargs: object) -> list[Path]:
    """``count`` instances of one study and series, named 0000.dcm, 0001.dcm, ..."""
    study_uid = str(kwargs.pop("study_uid", None) or generate_uid())
    series_uid = generate_uid()
    return [
        write(
            radiograph(study_uid=study_uid, series_uid=series_uid, seed=i, **kwargs),  # type: ignore[arg-type]
            directory / f"{i:04d}.dcm",
        )
        for i in range(count)
    ]
