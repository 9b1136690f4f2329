"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    Confusion,
    auc,
    binary_metrics,
    brier,
    confusion,
    reliability,
    threshold_for_sensitivity,
)


def test_confusion_and_table_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    c = confusion(y, p)
    assert c == Confusion(tp=3, fn=1, fp=1, tn=5)
    m = binary_metrics(c)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert m["accuracy"] == pytest.approx(8 / 10)


def test_paper_fold_6_row() -> None:
    # Table 1, fold 6: 7 covid all found, 8 normal with one false positive.
    m = binary_metrics(Confusion(tp=7, fn=0, fp=1, tn=7))
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx(0.8750)
    assert m["precision"] == pytest.approx(0.8750)
    assert m["f1"] == pytest.approx(0.9333, abs=1e-4)
    assert m["accuracy"] == pytest.approx(0.9333, abs=1e-4)


def test_summed_confusion_and_undefined_precision() -> None:
    total = Confusion(1, 0, 0, 1) + Confusion(0, 1, 0, 1)
    assert total == Confusion(1, 1, 0, 2)
    assert total.as_matrix().tolist() == [[2, 0], [1, 1]]
    assert math.isnan(binary_metrics(Confusion(0, 2, 0, 2))["precision"])


def test_auc_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_threshold_reaches_target_sensitivity_with_best_specificity() -> None:
    y = np.array([1] * 20 + [0] * 5)
    pos = np.linspace(0.05, 0.99, 20)  # one positive scores low
    scores = np.concatenate([pos, [0.1, 0.2, 0.3, 0.4, 0.5]])
    thr, sens, spec = threshold_for_sensitivity(y, scores, 0.95)
    # 5% of 20 positives = 1 miss allowed: the threshold is the 2nd lowest positive score.
    assert thr == pytest.approx(pos[1])
    assert sens == pytest.approx(19 / 20)
    assert spec == pytest.approx(np.mean(scores[20:] < pos[1]))
    assert threshold_for_sensitivity(y, scores, 1.0)[1] == 1.0


def test_brier_and_reliability() -> None:
    y = np.array([0, 1, 1, 0])
    s = np.array([0.0, 1.0, 0.5, 0.5])
    assert brier(y, s) == pytest.approx((0 + 0 + 0.25 + 0.25) / 4)
    mean_pred, observed, counts = reliability(y, s, bins=2)
    assert counts.tolist() == [1, 3]
    assert mean_pred[1] == pytest.approx(2 / 3)
    assert observed[1] == pytest.approx(2 / 3)
