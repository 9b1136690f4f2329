"""Finding labelled radiographs in the three supported layouts, and caching them as tensors.

Layouts (see docs/training.md):

* a folder with one sub-folder per class (``covid/``, ``normal/``); a ``manifest.csv`` beside
  them with ``file`` and ``patient_group`` columns gives patient ids;
* a CSV with columns ``path,label`` and optionally ``patient`` (paths relative to the CSV);
* the ``metadata.csv`` of the covid-chestxray-dataset (images under ``images/`` next to it).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.errors import TrainingError
from training.preprocessing import IMAGE_SUFFIXES, PreprocessConfig, load_unit_image

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("normal", "covid")
POSITIVE_CLASS = "covid"
FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE"}
_PATIENT_COLUMNS = ("patient", "patient_id", "patient_group")
_SCANNED_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm", ".dicom", "")


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``patient`` is ``None`` when the layout gives no patient id."""

    path: Path
    label: str
    patient: str | None = None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"cannot read CSV {path}: {exc}") from exc


def _check_label(label: str, classes: Sequence[str], where: str) -> str:
    normalised = label.strip().lower()
    if normalised not in classes:
        raise TrainingError(
            f"unknown label {label!r} in {where}; expected one of {list(classes)} "
            "(rename the folder or fix the label column)"
        )
    return normalised


def _folder_patients(root: Path) -> dict[str, str]:
    """``file`` -> ``patient_group`` from a manifest.csv beside the class folders, if any."""
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    rows = _read_csv(manifest)
    if not rows or "file" not in rows[0] or "patient_group" not in rows[0]:
        return {}
    return {row["file"]: row["patient_group"] for row in rows if row.get("patient_group")}


def scan_folder(root: Path, classes: Sequence[str]) -> list[Sample]:
    """One sub-folder per class; hidden files and unknown suffixes are skipped."""
    patients = _folder_patients(root)
    samples: list[Sample] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = _check_label(folder.name, classes, f"folder {folder}")
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in _SCANNED_SUFFIXES:
                log.warning("skipping %s: not a PNG, JPEG or DICOM file name", path)
                continue
            key = path.relative_to(root).as_posix()
            samples.append(Sample(path, label, patients.get(key)))
    return samples


def scan_label_csv(csv_path: Path, classes: Sequence[str]) -> list[Sample]:
    """A CSV with ``path,label`` and an optional patient column; paths relative to the CSV."""
    rows = _read_csv(csv_path)
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise TrainingError(f"{csv_path} needs columns path,label (and optionally patient)")
    column = next((c for c in _PATIENT_COLUMNS if c in rows[0]), None)
    samples = []
    for number, row in enumerate(rows, start=2):
        label = _check_label(row["label"], classes, f"{csv_path} line {number}")
        patient = (row.get(column) or None) if column else None
        samples.append(Sample(csv_path.parent / row["path"], label, patient))
    return samples


def scan_covid_chestxray(csv_path: Path, classes: Sequence[str]) -> list[Sample]:
    """covid-chestxray-dataset metadata: COVID-19 findings vs "No Finding", frontal views."""
    rows = _read_csv(csv_path)
    needed = {"finding", "view", "filename", "patientid"}
    if not rows or not needed <= set(rows[0]):
        raise TrainingError(f"{csv_path} lacks the columns {sorted(needed)} of covid-chestxray")
    samples = []
    for row in rows:
        if row["view"].strip().upper() not in FRONTAL_VIEWS:
            continue
        finding = row["finding"]
        if "COVID-19" in finding:
            label = POSITIVE_CLASS
        elif finding.strip() == "No Finding":
            label = "normal"
        else:
            continue
        if label not in classes:
            continue
        folder = row.get("folder") or "images"
        samples.append(Sample(csv_path.parent / folder / row["filename"], label, row["patientid"]))
    return samples


def discover(data: Path, classes: Sequence[str] = DEFAULT_CLASSES) -> list[Sample]:
    """Find the samples of ``data`` (folder, label CSV or covid-chestxray metadata.csv)."""
    if not data.exists():
        raise TrainingError(f"data path {data} does not exist")
    if data.is_dir() and (data / "metadata.csv").is_file() and (data / "images").is_dir():
        data = data / "metadata.csv"
    if data.is_file():
        header = _read_csv(data)[:1]
        if header and "finding" in header[0]:
            samples = scan_covid_chestxray(data, classes)
        else:
            samples = scan_label_csv(data, classes)
    else:
        samples = scan_folder(data, classes)
    if not samples:
        raise TrainingError(f"no labelled images found in {data}; see docs/training.md layouts")
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise TrainingError(f"image file {missing[0]} listed in {data} does not exist")
    return samples


def limit_per_class(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """Keep at most ``limit`` images per class, chosen reproducibly (for quick runs)."""
    if limit is None:
        return list(samples)
    rng = random.Random(seed)
    kept: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        kept.extend(rng.sample(members, min(limit, len(members))))
    return sorted(kept, key=lambda s: (s.label, str(s.path)))


def check_class_counts(samples: Sequence[Sample], classes: Sequence[str], folds: int) -> None:
    """Every class needs at least one image per fold."""
    counts = Counter(s.label for s in samples)
    for name in classes:
        if counts[name] < folds:
            raise TrainingError(
                f"class {name!r} has {counts[name]} images but {folds} folds need at least "
                f"{folds}; add images or lower --folds"
            )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 over the sorted ``file hash + label`` lines: same images and labels, same id."""
    lines = sorted(f"{file_sha256(s.path)} {s.label}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_cache(
    samples: Sequence[Sample],
    config: PreprocessConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Decode every image once into an (N, 1, size, size) float32 tensor in [0, 1].

    Decoding dominates a small epoch on 2 cores, so training reads this cache and only
    augments; the unit images come from the same function the worker uses.
    """
    cache = torch.empty((len(samples), 1, config.size, config.size), dtype=torch.float32)
    for index, sample in enumerate(samples):
        unit = load_unit_image(sample.path, size=config.size, resize=config.resize)
        cache[index, 0] = torch.from_numpy(unit)
        if progress is not None:
            progress(index + 1)
    return cache


class CachedImages(Dataset[tuple[torch.Tensor, int]]):
    """Items of a unit-image cache, transformed to model tensors on access."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
