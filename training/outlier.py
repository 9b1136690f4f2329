"""Outlier exposure for the image gate: a linear head that knows what a chest film is not.

The Mahalanobis distance of :mod:`training.ood` sees images unlike any training image (blank,
noise, other body parts). It misses chest radiographs shown wrongly: turned by 90 degrees,
inverted, or cropped to a part of the chest, whose pooled features stay close to the training
cloud. Following outlier exposure (Hendrycks, Mazeika and Dietterich 2019, "Deep anomaly
detection with outlier exposure"), each fold also fits a logistic regression on the same pooled
features, separating its training images from transformed copies of them (the kinds in
:data:`OUTLIER_KINDS`). At scoring time it is one dot product per fold on features the scoring
pass already computed.

The two tests share the 2 % budget: the outlier logit's threshold refuses at most half of it
out of fold, the distance threshold the rest (:func:`choose_thresholds`). One gate score carries
both (:func:`combined_score`), so ``score > threshold`` stays the decision everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.nn.functional import interpolate

# What the head is shown as "not a frontal chest film that the model can read".
OUTLIER_KINDS = ("rot90", "inverted", "crop", "upside_down")
OUTLIER_METHOD = ("outlier exposure: logistic regression (C=0.01, balanced) on the pooled "
                  "features, training images against rotated, inverted, cropped and upside-down "
                  "copies")
REGULARISATION = 0.01  # sklearn's C; chosen on fold 1 of the 224 px dev ensemble, 0.001-0.1


def _rotate(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return torch.rot90(x, int(rng.choice([1, 3])), dims=(1, 2))


def _crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A 25-60 % window, resized back to the input size."""
    size = x.shape[-1]
    side = max(int(size * rng.uniform(0.25, 0.6)), 2)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
    window = x[None, :, top:top + side, left:left + side]
    return interpolate(window, size=tuple(x.shape[-2:]), mode="bilinear", antialias=True,
                         align_corners=False)[0]


TRANSFORMS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "rot90": _rotate,
    "inverted": lambda x, _: 1.0 - x,
    "crop": _crop,
    "upside_down": lambda x, _: torch.flip(x, dims=(1,)),
}


def outlier_examples(units: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One transformed copy of each (N, 1, S, S) unit image, the kinds taken in turn."""
    rng = np.random.default_rng(seed)
    return torch.stack([TRANSFORMS[OUTLIER_KINDS[i % len(OUTLIER_KINDS)]](x, rng)
                        for i, x in enumerate(units)])


@dataclass(frozen=True)
class OutlierHead:
    """A fold's standardised linear outlier score (float64 arrays)."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (D,)
    intercept: float

    def logit(self, features: np.ndarray) -> np.ndarray:
        """(N,) log-odds that each (N, D) feature row comes from a transformed image."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return x @ self.coef + self.intercept

    def to_tensors(self, prefix: str = "oe.") -> dict[str, torch.Tensor]:
        return {f"{prefix}mean": torch.from_numpy(self.mean),
                f"{prefix}scale": torch.from_numpy(self.scale),
                f"{prefix}coef": torch.from_numpy(self.coef),
                f"{prefix}intercept": torch.tensor([self.intercept], dtype=torch.float64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str = "oe.") -> OutlierHead | None:
        """The head stored under ``prefix``, or ``None`` when the sidecar predates it."""
        if f"{prefix}coef" not in a:
            return None
        return cls(a[f"{prefix}mean"], a[f"{prefix}scale"], a[f"{prefix}coef"],
                   float(a[f"{prefix}intercept"][0]))


def fit_outlier_head(inside: np.ndarray, outside: np.ndarray,
                     regularisation: float = REGULARISATION) -> OutlierHead:
    """Logistic regression of ``outside`` (label 1) against ``inside`` (label 0) features."""
    x = np.vstack([inside, outside]).astype(np.float64)
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=regularisation, max_iter=5000, class_weight="balanced")
    model.fit((x - scaler.mean_) / scale, y)
    return OutlierHead(scaler.mean_.astype(np.float64), scale.astype(np.float64),
                       model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def choose_threshold(scores: np.ndarray, target: float) -> float:
    """The smallest threshold that refuses at most ``target`` of ``scores``."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    keep = int(np.ceil((1.0 - target) * len(ordered)))
    return float(ordered[max(keep - 1, 0)])


def choose_thresholds(distance: np.ndarray, logit: np.ndarray,
                      target: float) -> tuple[float, float]:
    """(distance threshold, logit threshold) refusing at most ``target`` of the images with
    either test: the logit takes at most half the budget, the distance what is left."""
    logit_threshold = choose_threshold(logit, target / 2)
    flagged = logit > logit_threshold
    for candidate in np.sort(np.unique(distance)):
        if ((distance > candidate) | flagged).mean() <= target:
            return float(candidate), logit_threshold
    return float(np.max(distance)), logit_threshold


def combined_score(distance: np.ndarray, logit: np.ndarray, distance_threshold: float,
                   logit_threshold: float) -> np.ndarray:
    """One gate score: the distance, or the distance threshold plus the logit's excess over
    its own threshold when that is larger. Above ``distance_threshold`` iff either test
    refuses the image."""
    return np.maximum(distance, distance_threshold + (logit - logit_threshold))
