"""The validation's intervals against published values and library results (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from worker.validation.criteria import AcceptanceCriteria, verdict
from worker.validation.stats import Sample, auc_interval, figures, wilson


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Stat Med 17:857, Table I, Wilson method
    (15, 148, 0.0624, 0.1605),
    (0, 10, 0.0, 0.2775),
])
def test_wilson_intervals_match_published_values(k: int, n: int, low: float,
                                                 high: float) -> None:
    estimate = wilson(k, n)
    assert estimate.value == pytest.approx(k / n)
    assert (estimate.low, estimate.high) == (pytest.approx(low, abs=5e-5),
                                             pytest.approx(high, abs=5e-5))


def test_bootstrap_auc_agrees_with_sklearn_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, dtype=int), np.zeros(60, dtype=int)]
    scores = np.r_[rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 60)]
    estimate = auc_interval(y, scores, samples=500)
    assert estimate.value == pytest.approx(roc_auc_score(y, scores))
    u = mannwhitneyu(scores[y == 1], scores[y == 0]).statistic
    assert u / (40 * 60) == pytest.approx(estimate.value)  # what the replicates compute
    assert estimate.low < estimate.value < estimate.high
    assert auc_interval(y, scores, samples=500) == estimate  # seeded
    separated = auc_interval(y, np.r_[np.ones(40), np.zeros(60)], samples=200)
    assert (separated.value, separated.low, separated.high) == (1.0, 1.0, 1.0)


def test_figures_count_at_the_threshold_and_leave_out_not_assessable() -> None:
    samples = [Sample(str(i), i < 10, 0.9 if i < 8 else 0.1, "suspected", {})
               for i in range(30)]
    samples.append(Sample("gate", True, 0.9, "not_assessable", {}))
    f = figures(samples, 0.5, bootstrap=100)
    assert (f.tp, f.fn, f.fp, f.tn) == (8, 2, 0, 20)
    assert f.sensitivity == wilson(8, 10) and f.specificity == wilson(20, 20)
    assert f.not_assessable == wilson(1, 31)
    failed = verdict(f, AcceptanceCriteria(min_positives=50))
    assert any("10 positives, at least 50" in why for why in failed)
    assert any("sensitivity" in why for why in failed)  # lower bound 0.49 < 0.85
