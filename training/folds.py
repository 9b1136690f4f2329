"""Stratified k-fold assignment, grouped by patient when patient ids are known."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from training.data import Sample
from training.errors import TrainingError

FOLDS_FILE = "folds.csv"


def assign_folds(samples: Sequence[Sample], n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) of each sample, as the test fold it belongs to.

    With patient ids, ``StratifiedGroupKFold`` keeps every image of a patient in one fold so
    a model is never tested on a patient it saw. Samples without an id get their own group.
    """
    if n_folds < 2:
        raise TrainingError(f"--folds {n_folds} is too few; use at least 2")
    labels = np.array([s.label for s in samples])
    folds = np.full(len(samples), -1, dtype=np.int64)
    if any(s.patient is not None for s in samples):
        groups = np.array(
            [s.patient if s.patient is not None else f"__image_{i}" for i, s in enumerate(samples)]
        )
        if len(set(groups)) < n_folds:
            raise TrainingError(f"{len(set(groups))} patients cannot fill {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(samples)), labels, groups)
    else:
        plain = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = plain.split(np.zeros(len(samples)), labels)
    for index, (_, test) in enumerate(splits):
        folds[test] = index
    for index in range(n_folds):
        if len(set(labels[folds == index])) < len(set(labels)):
            raise TrainingError(
                f"fold {index} lacks a class (too few patients per class for {n_folds} folds); "
                "lower --folds or add images"
            )
    return folds


def write_folds(path: Path, samples: Sequence[Sample], folds: np.ndarray) -> None:
    """Save the assignment as CSV: index, path, label, patient, fold."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "path", "label", "patient", "fold"])
        for index, (sample, fold) in enumerate(zip(samples, folds, strict=True)):
            writer.writerow([index, str(sample.path), sample.label, sample.patient or "", fold])


def read_folds(path: Path) -> list[tuple[str, str, int]]:
    """The (path, label, fold) rows of a saved ``folds.csv``."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [(r["path"], r["label"], int(r["fold"])) for r in csv.DictReader(handle)]
