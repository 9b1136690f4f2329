"""Binary metrics of the paper's Table 1, ROC/AUC, threshold choice and calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

METRIC_NAMES = ("sensitivity", "specificity", "precision", "f1", "accuracy")


@dataclass(frozen=True)
class Confusion:
    """Counts with the positive class (covid) as positive."""

    tp: int
    fn: int
    fp: int
    tn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fn + other.fn, self.fp + other.fp, self.tn + other.tn
        )

    def as_matrix(self) -> np.ndarray:
        """Rows true (negative, positive), columns predicted (negative, positive)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
    """Confusion counts from 0/1 truth and predictions."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    return Confusion(int(np.sum(t & p)), int(np.sum(t & ~p)), int(np.sum(~t & p)),
                     int(np.sum(~t & ~p)))


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan  # undefined, not 0: shown as "n/a"


def binary_metrics(c: Confusion) -> dict[str, float]:
    """Sensitivity, specificity, precision, F1 and accuracy (NaN where undefined)."""
    sens = _ratio(c.tp, c.tp + c.fn)
    prec = _ratio(c.tp, c.tp + c.fp)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    return {
        "sensitivity": sens,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "precision": prec,
        "f1": f1,
        "accuracy": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
    }


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    if len(set(np.asarray(y_true).tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y_true, scores))


def roc(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return fpr, tpr


def threshold_for_sensitivity(
    y_true: np.ndarray, scores: np.ndarray, target: float
) -> tuple[float, float, float]:
    """Highest threshold whose sensitivity (score >= threshold) reaches ``target``.

    Returns (threshold, sensitivity, specificity). The highest such threshold gives the best
    specificity among the operating points that miss at most ``1 - target`` of positives.
    """
    y = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(scores)[y])
    if pos.size == 0:
        raise ValueError("no positive samples to set a threshold on")
    # Allow at most floor((1 - target) * n) misses; float fuzz must not cost a positive.
    misses = math.floor((1.0 - target) * pos.size + 1e-9)
    threshold = float(pos[min(misses, pos.size - 1)])
    pred = np.asarray(scores) >= threshold
    m = binary_metrics(confusion(y, pred))
    return threshold, m["sensitivity"], m["specificity"]


def brier(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared error of the positive-class probability."""
    return float(np.mean((np.asarray(scores, dtype=float) - np.asarray(y_true, dtype=float)) ** 2))


def reliability(
    y_true: np.ndarray, scores: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency, count."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    mean_pred = np.full(bins, np.nan)
    observed = np.full(bins, np.nan)
    counts = np.zeros(bins, dtype=int)
    for b in range(bins):
        mask = which == b
        counts[b] = int(mask.sum())
        if counts[b]:
            mean_pred[b] = float(np.mean(np.asarray(scores)[mask]))
            observed[b] = float(np.mean(np.asarray(y_true)[mask]))
    return mean_pred, observed, counts


def wilson_interval(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """Wilson score interval of a proportion (``scipy.stats.binomtest``); NaNs when no trials."""
    from scipy.stats import binomtest

    if trials == 0:
        return math.nan, math.nan
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence,
                                                    method="wilson")
    return float(ci.low), float(ci.high)


def auc_bootstrap_interval(y_true: np.ndarray, scores: np.ndarray, *, samples: int = 2000,
                           seed: int = 20261201) -> tuple[float, float]:
    """95 % percentile interval of the AUC over a stratified, seeded bootstrap.

    Positives and negatives are resampled separately, so each replicate has both classes.
    A replicate's AUC is its Mann-Whitney U / (n_pos * n_neg) (``scipy.stats.mannwhitneyu``,
    all replicates at once), which equals ``roc_auc_score``. NaNs with a single class.
    """
    from scipy.stats import mannwhitneyu

    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not pos.size or not neg.size:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    u = mannwhitneyu(rng.choice(pos, (samples, pos.size)), rng.choice(neg, (samples, neg.size)),
                     axis=1, method="asymptotic").statistic
    low, high = np.percentile(np.asarray(u, dtype=float) / (pos.size * neg.size), [2.5, 97.5])
    return float(low), float(high)
