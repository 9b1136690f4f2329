"""Data layouts, input errors and fold assignment (no patient leakage)."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import gradient_png
from training.data import (
    check_class_counts,
    dataset_fingerprint,
    discover,
    limit_per_class,
    load_cache,
)
from training.errors import TrainingError
from training.folds import assign_folds, read_folds, write_folds
from training.preprocessing import PreprocessConfig

CLASSES = ("normal", "covid")


def test_shared_folder_layout_uses_patient_groups(cxr_dir: Path) -> None:
    samples = discover(cxr_dir)
    assert len(samples) == 336
    assert sum(s.label == "covid" for s in samples) == 168
    assert all(s.patient for s in samples)
    assert len({s.patient for s in samples}) == 209


def test_no_patient_leakage_across_ten_folds(cxr_dir: Path) -> None:
    samples = discover(cxr_dir)
    folds = assign_folds(samples, 10, seed=42)
    seen: dict[str, set[int]] = defaultdict(set)
    for sample, fold in zip(samples, folds, strict=True):
        seen[str(sample.patient)].add(int(fold))
    assert all(len(f) == 1 for f in seen.values()), "a patient appears in two folds"
    for k in range(10):
        labels = [s.label for s, f in zip(samples, folds, strict=True) if f == k]
        assert 0.3 < labels.count("covid") / len(labels) < 0.7  # stratified
    assert np.array_equal(folds, assign_folds(samples, 10, seed=42))  # seeded


def test_folds_without_patients_and_csv_round_trip(make_folder_dataset: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    samples = discover(make_folder_dataset(per_class=6))
    assert all(s.patient is None for s in samples)
    folds = assign_folds(samples, 3, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 4]
    write_folds(tmp_path / "folds.csv", samples, folds)
    rows = read_folds(tmp_path / "folds.csv")
    assert [r[2] for r in rows] == folds.tolist()


def test_label_csv_layout(tmp_path: Path) -> None:
    for i in range(3):
        gradient_png(tmp_path / "img" / f"{i}.png", seed=i)
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient"])
        writer.writerows([["img/0.png", "covid", "p1"], ["img/1.png", "Normal", "p1"],
                          ["img/2.png", "normal", ""]])
    samples = discover(tmp_path / "labels.csv")
    assert [(s.label, s.patient) for s in samples] == [("covid", "p1"), ("normal", "p1"),
                                                       ("normal", None)]


def test_covid_chestxray_metadata_layout(tmp_path: Path) -> None:
    rows = [("1", "PA", "Pneumonia/Viral/COVID-19", "a.png"),
            ("1", "AP Supine", "COVID-19", "b.png"), ("2", "L", "COVID-19", "c.png"),
            ("3", "PA", "No Finding", "d.png"),
            ("4", "AP", "Pneumonia/Bacterial", "e.png")]
    with (tmp_path / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientid", "view", "finding", "filename", "folder"])
        for pid, view, finding, name in rows:
            writer.writerow([pid, view, finding, name, "images"])
            gradient_png(tmp_path / "images" / name, seed=len(name))
    samples = discover(tmp_path)  # the folder holding metadata.csv and images/
    assert [(s.path.name, s.label, s.patient) for s in samples] == [
        ("a.png", "covid", "1"), ("b.png", "covid", "1"), ("d.png", "normal", "3")]


def test_unknown_label_names_the_folder(make_folder_dataset: Callable[..., Path]) -> None:
    root = make_folder_dataset(per_class=2, classes=("covid", "normal", "pneumonia"))
    with pytest.raises(TrainingError, match=r"unknown label 'pneumonia'.*pneumonia"):
        discover(root)


def test_too_few_images_per_class_names_the_class(make_folder_dataset: Callable[..., Path]) -> None:
    samples = discover(make_folder_dataset(per_class=2))
    with pytest.raises(TrainingError, match="class 'normal' has 2 images but 3 folds"):
        check_class_counts(samples, CLASSES, folds=3)


def test_unreadable_image_names_the_file(make_folder_dataset: Callable[..., Path]) -> None:
    root = make_folder_dataset(per_class=2)
    (root / "covid" / "corrupt.png").write_bytes(b"\x89PNG truncated")
    samples = discover(root)
    with pytest.raises(TrainingError, match=r"corrupt\.png"):
        load_cache(samples, PreprocessConfig(size=16))


def test_missing_listed_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\nnope.png,covid\n")
    with pytest.raises(TrainingError, match=r"nope\.png.*does not exist"):
        discover(tmp_path / "labels.csv")


def test_limit_and_fingerprint(make_folder_dataset: Callable[..., Path]) -> None:
    samples = discover(make_folder_dataset(per_class=5))
    kept = limit_per_class(samples, 3, seed=1)
    assert len(kept) == 6 and kept == limit_per_class(samples, 3, seed=1)
    assert dataset_fingerprint(kept) == dataset_fingerprint(list(reversed(kept)))
    assert dataset_fingerprint(kept) != dataset_fingerprint(samples)
