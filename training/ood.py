"""The image gate: is an input like the images the ensemble was trained on?

Each fold model's global-average-pooled stage outputs (layer1 to layer4 of the ResNet-50:
256, 512, 1024 and the 2048-d penultimate layer) are summarised, per stage, on that fold's
training images as a Gaussian with a probabilistic-PCA covariance (Tipping and Bishop 1999):
the ``k`` leading principal directions carry a Ledoit-Wolf shrunk covariance of their scores,
the remaining directions one pooled residual variance. An image's distance per stage is its
Mahalanobis distance (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples", with their feature ensemble over stages); each is divided by its
median on the fold's held-out images and the fold's distance is the largest (early stages see
noise, blank and inverted images, the last one content). Fold distances are divided by their
held-out median; the gate score is their mean over folds, and the threshold rejects at most
2 % of the out-of-fold scores. Each fold also carries an outlier-exposure head
(:mod:`training.outlier`) for chest films shown wrongly (rotated, inverted, cropped), which the
distance misses; the two tests share the 2 %.

The statistics of a fold live in a sidecar ``fold_XX.ood.safetensors`` (no pickle) whose
SHA-256 is in ``ensemble.json`` (block ``ood_gate``). docs/safety-gate.md explains the choice.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.covariance import LedoitWolf
from torch import nn

from training import outlier
from training.data import file_sha256
from training.errors import TrainingError
from training.outlier import OutlierHead

log = logging.getLogger(__name__)

GATE_METHOD = ("ppca-mahalanobis-ledoit-wolf, max over 4 stages; outlier-exposure logistic "
               "head")
FEATURE_LAYER = "resnet50 pooled layer1-4 (256+512+1024+2048)"
LAYER_DIMS = (256, 512, 1024, 2048)  # the global-average-pooled output of each ResNet stage
MAX_COMPONENTS = 64
TARGET_REJECTION = 0.02  # at most this share of in-distribution images is refused
SIDECAR_SUFFIX = ".ood.safetensors"


def stage_outputs(model: nn.Module,
                  x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass of a torchvision ResNet: (pooled features of the four stages
    (B, 3840), logits (B, C), the last stage's feature map (B, 2048, h, w)). The last 2048
    features are the penultimate layer the head reads."""
    m: Any = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    pooled = []
    for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = stage(x)
        pooled.append(torch.flatten(m.avgpool(x), 1))
    return torch.cat(pooled, dim=1), m.fc(pooled[-1]), x


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stage_outputs` without the feature map: (features (B, 3840), logits (B, C))."""
    pooled, logits, _ = stage_outputs(model, x)
    return pooled, logits


@dataclass(frozen=True)
class LayerStats:
    """One stage's feature Gaussian (float64 arrays) and its held-out median distance."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, k), orthonormal columns
    precision: np.ndarray  # (k, k), inverse of the shrunk covariance of the scores
    residual_var: float  # variance per direction outside the k components
    scale: float = 1.0

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of (N, D) features to the fitted Gaussian."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        scores = centred @ self.components
        residual = np.maximum((centred * centred).sum(1) - (scores * scores).sum(1), 0.0)
        inside = np.einsum("ij,jk,ik->i", scores, self.precision, scores)
        return np.sqrt(inside + residual / self.residual_var)


def _fit_layer(features: np.ndarray, max_components: int) -> LayerStats:
    """PPCA Gaussian of (N, D) features: PCA, Ledoit-Wolf on the scores, pooled residual."""
    n, d = features.shape
    mean = features.mean(0)
    centred = features - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(max_components, n - 2, d - 1))
    components = vt[:k].T
    precision = LedoitWolf().fit(centred @ components).precision_
    # the variance left outside the k directions, spread over the other d - k directions
    rest = float((singular[k:] ** 2).sum()) / ((n - 1) * (d - k))
    return LayerStats(mean, components, precision, max(rest, 1e-12))


@dataclass(frozen=True)
class FoldStats:
    """One fold's per-stage statistics; its distance is the largest scaled stage distance.
    ``outlier`` is the fold's outlier-exposure head (:mod:`training.outlier`); sidecars
    written before it have none."""

    layers: tuple[LayerStats, ...]
    scale: float = 1.0  # median distance of the fold's out-of-fold images
    outlier: OutlierHead | None = None

    def _split(self, features: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(features, dtype=np.float64)
        edges = np.cumsum([0, *(layer.mean.shape[0] for layer in self.layers)])
        if x.shape[1] != edges[-1]:
            raise TrainingError(f"gate statistics expect {edges[-1]} features, got {x.shape[1]}")
        return [x[:, a:b] for a, b in itertools.pairwise(edges)]

    def layer_distances(self, features: np.ndarray) -> np.ndarray:
        """(stages, N) distances, each divided by its stage's held-out median."""
        return np.stack([layer.distance(part) / layer.scale
                         for layer, part in zip(self.layers, self._split(features),
                                                strict=True)])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) the farthest stage: any stage unlike training makes the image unlike it."""
        return self.layer_distances(features).max(0)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"scale": torch.tensor([self.scale], dtype=torch.float64)}
        for i, layer in enumerate(self.layers):
            tensors.update({
                f"l{i}.mean": torch.from_numpy(layer.mean),
                f"l{i}.components": torch.from_numpy(np.ascontiguousarray(layer.components)),
                f"l{i}.precision": torch.from_numpy(np.ascontiguousarray(layer.precision)),
                f"l{i}.residual_var": torch.tensor([layer.residual_var], dtype=torch.float64),
                f"l{i}.scale": torch.tensor([layer.scale], dtype=torch.float64)})
        if self.outlier is not None:
            tensors.update(self.outlier.to_tensors())
        return tensors

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor]) -> FoldStats:
        a = {k: v.double().numpy() for k, v in data.items()}
        count = sum(1 for k in a if k.startswith("l") and k.endswith(".mean"))
        layers = tuple(LayerStats(a[f"l{i}.mean"], a[f"l{i}.components"], a[f"l{i}.precision"],
                                  float(a[f"l{i}.residual_var"][0]), float(a[f"l{i}.scale"][0]))
                       for i in range(count))
        return cls(layers, float(a["scale"][0]), OutlierHead.from_arrays(a))


def fit_fold_stats(features: np.ndarray, dims: tuple[int, ...] = LAYER_DIMS,
                   max_components: int = MAX_COMPONENTS) -> FoldStats:
    """Per stage (``dims`` splits the columns), a PPCA Gaussian of the training features."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] < 3:
        raise TrainingError(f"the image gate needs at least 3 training images, got {x.shape[0]}")
    if sum(dims) != x.shape[1]:
        raise TrainingError(f"features have {x.shape[1]} columns, stages {dims} sum to "
                            f"{sum(dims)}")
    edges = np.cumsum([0, *dims])
    return FoldStats(tuple(_fit_layer(x[:, a:b], max_components)
                           for a, b in itertools.pairwise(edges)))


def calibrate(stats: FoldStats, held_out_features: np.ndarray) -> FoldStats:
    """Scale each stage, then the fold, by median distances of images the fit did not see."""
    raw = [layer.distance(part) for layer, part in zip(stats.layers,
                                                       stats._split(held_out_features),
                                                       strict=True)]
    layers = tuple(LayerStats(layer.mean, layer.components, layer.precision,
                              layer.residual_var, max(float(np.median(d)), 1e-12))
                   for layer, d in zip(stats.layers, raw, strict=True))
    scaled = FoldStats(layers)
    return FoldStats(layers, max(float(np.median(scaled.distance(held_out_features))), 1e-12),
                     stats.outlier)


def choose_threshold(oof_scores: np.ndarray, target: float = TARGET_REJECTION) -> float:
    """The smallest threshold that rejects at most ``target`` of the out-of-fold scores."""
    return outlier.choose_threshold(oof_scores, target)


def crossfit_rejection(oof_scores: np.ndarray, folds: np.ndarray,
                       target: float = TARGET_REJECTION,
                       logits: np.ndarray | None = None) -> float:
    """Honest in-distribution rejection rate: each fold's images against thresholds chosen on
    the other folds' out-of-fold scores (distances, and outlier logits when given) only."""
    rejected = 0
    for fold in np.unique(folds):
        mine, others = folds == fold, folds != fold
        if logits is None:
            refused = oof_scores[mine] > choose_threshold(oof_scores[others], target)
        else:
            t_distance, t_logit = outlier.choose_thresholds(oof_scores[others],
                                                            logits[others], target)
            refused = (oof_scores[mine] > t_distance) | (logits[mine] > t_logit)
        rejected += int(refused.sum())
    return rejected / len(oof_scores)


def save_fold_stats(path: Path, stats: FoldStats) -> str:
    """Write the sidecar atomically; returns its SHA-256."""
    tmp = path.with_suffix(".tmp")
    save_file(stats.to_tensors(), str(tmp), metadata={"method": GATE_METHOD})
    tmp.replace(path)
    return file_sha256(path)


def load_fold_stats(path: Path) -> FoldStats:
    """Read a sidecar written by :func:`save_fold_stats`."""
    try:
        return FoldStats.from_tensors(load_file(str(path), device="cpu"))
    except (OSError, SafetensorError, KeyError) as exc:
        raise TrainingError(f"cannot read gate statistics {path}: {exc}") from exc


@dataclass(frozen=True)
class Gate:
    """The loaded gate of an ensemble: per fold statistics and one threshold; with outlier
    heads (every fold has one), also the threshold of their mean logit."""

    folds: tuple[FoldStats, ...]
    threshold: float
    outlier_threshold: float | None = None

    def fold_scores(self, per_fold_features: Sequence[np.ndarray]) -> np.ndarray:
        """(folds, N) scaled distances from each fold's (N, D) features."""
        return np.stack([s.distance(f) / s.scale
                         for s, f in zip(self.folds, per_fold_features, strict=True)])

    def outlier_logits(self, per_fold_features: Sequence[np.ndarray]) -> np.ndarray | None:
        """(N,) mean outlier logit over the folds, or ``None`` without outlier heads."""
        heads = [s.outlier for s in self.folds]
        if self.outlier_threshold is None or any(h is None for h in heads):
            return None
        return np.mean([h.logit(f) for h, f in zip(heads, per_fold_features, strict=True)
                        if h is not None], axis=0)

    def scores(self, per_fold_features: Sequence[np.ndarray]) -> np.ndarray:
        """(N,) gate score: the mean scaled distance over the folds, raised by the outlier
        logit where that refuses the image (:func:`training.outlier.combined_score`)."""
        distance = self.fold_scores(per_fold_features).mean(0)
        logits = self.outlier_logits(per_fold_features)
        if logits is None or self.outlier_threshold is None:
            return distance
        return outlier.combined_score(distance, logits, self.threshold, self.outlier_threshold)

    def unlike(self, scores: Iterable[float]) -> list[bool]:
        """Whether each score is beyond the threshold (the image is not assessable)."""
        return [float(s) > self.threshold for s in scores]


def load_gate(directory: Path, block: dict[str, Any] | None, *,
              verify_hashes: bool = True) -> Gate | None:
    """The gate named by a manifest's ``ood_gate`` block, or ``None`` when it has none."""
    if not block:
        return None
    stats = []
    for entry in block["folds"]:
        path = Path(directory) / entry["file"]
        if not path.is_file():
            raise TrainingError(f"gate statistics {path} named in ensemble.json are missing")
        if verify_hashes and file_sha256(path) != entry["sha256"]:
            raise TrainingError(f"gate statistics {path} do not match their sha256")
        stats.append(load_fold_stats(path))
    logit_threshold = block.get("outlier_threshold")
    return Gate(tuple(stats), float(block["threshold"]),
                None if logit_threshold is None else float(logit_threshold))


def sidecar_name(fold_index: int) -> str:
    """The file name of a fold's statistics next to ``fold_XX.safetensors``."""
    return f"fold_{fold_index:02d}{SIDECAR_SUFFIX}"
