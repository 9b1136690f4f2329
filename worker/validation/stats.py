"""The figures of a local validation, with their 95 % intervals.

Proportions get Wilson score intervals, the AUC a stratified, seeded bootstrap percentile
interval: both computed in ``training.metrics`` (scipy), which ``evaluate`` uses too.
Brier score and counts come from ``training.metrics`` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.metrics import auc, auc_bootstrap_interval, brier, confusion, wilson_interval

Z95 = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20261201


@dataclass(frozen=True)
class Estimate:
    """A figure and its 95 % interval (NaN when undefined, e.g. no positives)."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} ({self.low:.{digits}f} to {self.high:.{digits}f})"

    def overlaps(self, other: Estimate) -> bool:
        """Whether the two intervals share any value (NaN: nothing to compare, so True)."""
        if any(math.isnan(v) for v in (self.low, self.high, other.low, other.high)):
            return True
        return self.low <= other.high and other.low <= self.high


NAN = Estimate(math.nan, math.nan, math.nan)


def wilson(successes: int, trials: int) -> Estimate:
    """The proportion and its 95 % Wilson score interval."""
    if trials == 0:
        return NAN
    low, high = wilson_interval(successes, trials, Z95)
    return Estimate(successes / trials, low, high)


def auc_interval(y: np.ndarray, scores: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> Estimate:
    """ROC AUC with a stratified bootstrap 95 % percentile interval."""
    point = auc(y, scores)
    if math.isnan(point):
        return NAN
    low, high = auc_bootstrap_interval(y, scores, samples=samples, seed=seed)
    return Estimate(point, low, high)


@dataclass(frozen=True)
class Sample:
    """One validated study (or image): truth, the model's output, its decision, its source."""

    key: str
    positive: bool
    probability: float
    decision: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class Figures:
    """What a validation reports for one group of samples."""

    n: int
    positives: int
    negatives: int
    sensitivity: Estimate
    specificity: Estimate
    auc: Estimate
    brier: float
    not_assessable: Estimate
    tp: int
    fn: int
    fp: int
    tn: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes None)."""
        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return None if isinstance(value, float) and math.isnan(value) else value
        return {k: clean(v) for k, v in asdict(self).items()}


def figures(samples: Sequence[Sample], threshold: float, *, bootstrap: int = BOOTSTRAP_SAMPLES
            ) -> Figures:
    """Sensitivity and specificity at ``threshold`` (Wilson), AUC (bootstrap), Brier, and
    the not-assessable rate. Not-assessable samples count in that rate only: the gate made
    no claim about them, so they are left out of the other figures."""
    assessed = [s for s in samples if s.decision != "not_assessable"]
    y = np.array([int(s.positive) for s in assessed], dtype=int)
    p = np.array([s.probability for s in assessed], dtype=float)
    counts = confusion(y, p >= threshold)
    return Figures(
        n=len(samples), positives=int(y.sum()), negatives=int(y.size - y.sum()),
        sensitivity=wilson(counts.tp, counts.tp + counts.fn),
        specificity=wilson(counts.tn, counts.tn + counts.fp),
        auc=auc_interval(y, p, samples=bootstrap) if y.size else NAN,
        brier=brier(y, p) if y.size else math.nan,
        not_assessable=wilson(len(samples) - len(assessed), len(samples)),
        tp=counts.tp, fn=counts.fn, fp=counts.fp, tn=counts.tn)


BREAKDOWN_ATTRIBUTES = ("Manufacturer", "StationName", "ViewPosition", "Modality")


def breakdown(samples: Sequence[Sample], threshold: float, *, bootstrap: int = 500
              ) -> dict[str, dict[str, Figures]]:
    """The figures per value of each header attribute (a weak scanner stands out)."""
    result: dict[str, dict[str, Figures]] = {}
    for attribute in BREAKDOWN_ATTRIBUTES:
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample.attributes.get(attribute) or "(not recorded)",
                              []).append(sample)
        result[attribute] = {value: figures(group, threshold, bootstrap=bootstrap)
                             for value, group in sorted(groups.items())}
    return result
