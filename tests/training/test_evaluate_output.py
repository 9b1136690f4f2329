"""``cxr-triage evaluate``'s summary: the threshold named, intervals, a warning below chance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from training.evaluate import BELOW_CHANCE, _intervals, summary_line
from training.metrics import auc, binary_metrics, brier, confusion


def _summary(y: np.ndarray, mean: np.ndarray, threshold: float) -> dict[str, object]:
    counts = confusion(y, mean >= threshold)
    return {"auc": auc(y, mean), "brier": brier(y, mean), "threshold": threshold,
            **binary_metrics(counts), **_intervals(counts, y, mean)}


def test_summary_names_the_threshold_and_gives_intervals() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(15, dtype=int), np.zeros(14, dtype=int)]
    mean = np.r_[rng.uniform(0.1, 1.0, 15), rng.uniform(0.0, 0.6, 14)]
    summary = _summary(y, mean, 0.2302)
    line = summary_line(summary)
    assert f"accuracy at the threshold (0.2302): {summary['accuracy']:.4f} (95 % CI " in line
    counts = confusion(y, mean >= 0.2302)
    correct = counts.tp + counts.tn
    ci = binomtest(correct, 29).proportion_ci(method="wilson")
    assert summary["accuracy_ci"] == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert "WARNING" not in line


def test_summary_warns_below_chance() -> None:
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    mean = np.r_[np.linspace(0.0, 0.4, 10), np.linspace(0.5, 0.9, 10)]  # anti-correlated
    line = summary_line(_summary(y, mean, 0.5))
    assert f"WARNING: AUC 0.0000 is below 0.5: {BELOW_CHANCE}" in line
