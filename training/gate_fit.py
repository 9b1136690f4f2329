"""Fitting the image gate after cross-validation (``training.ood`` holds the statistics).

Per fold: the fold's weights give the pooled features of every image in one fp32 pass; the
statistics are fitted on the fold's training images and scaled on its held-out images; the
outlier head (:mod:`training.outlier`) is fitted on the training images against transformed
copies of them. The thresholds are chosen on the pooled out-of-fold scores. Runs again on a
resumed run, so an ensemble trained before the gate existed gains it by re-running
``cxr-triage train``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.cv import FoldResult, Prepared
from training.engine import EvalTransform
from training.manifest import load_manifest, write_manifest
from training.model import load_fold_model
from training.ood import (
    FEATURE_LAYER,
    GATE_METHOD,
    TARGET_REJECTION,
    FoldStats,
    calibrate,
    crossfit_rejection,
    features_and_logits,
    fit_fold_stats,
    save_fold_stats,
    sidecar_name,
)
from training.outlier import (
    OUTLIER_KINDS,
    OUTLIER_METHOD,
    choose_thresholds,
    combined_score,
    fit_outlier_head,
    outlier_examples,
)
from training.preprocessing import PreprocessConfig, load_unit_image

log = logging.getLogger(__name__)
OOF_GATE_FILE = "oof_gate.csv"


def image_features(model: torch.nn.Module, units: torch.Tensor, config: PreprocessConfig,
                   batch_size: int = 32) -> np.ndarray:
    """(N, 3840) fp32 pooled stage features of cached unit images (N, 1, S, S)."""
    transform = EvalTransform(config)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(units), batch_size):
            x = transform(units[start:start + batch_size]).contiguous()
            features, _ = features_and_logits(model, x)
            chunks.append(features.float().numpy())
    return np.concatenate(chunks).astype(np.float64)


def fit_fold_gate(model: torch.nn.Module, config: PreprocessConfig, fit: torch.Tensor,
                  held_out: torch.Tensor, seed: int = 0) -> tuple[FoldStats, np.ndarray,
                                                              np.ndarray]:
    """One fold's statistics and outlier head from unit images: fitted on ``fit``, scaled on
    ``held_out``; with the held-out images' scaled distances and outlier logits."""
    inside, held = image_features(model, fit, config), image_features(model, held_out, config)
    outside = image_features(model, outlier_examples(fit, seed=seed), config)
    head = fit_outlier_head(inside, outside)
    stats = dataclasses.replace(calibrate(fit_fold_stats(inside), held), outlier=head)
    return stats, stats.distance(held) / stats.scale, head.logit(held)


def _sidecar_entry(out: Path, index: int, stats: FoldStats, n_train: int) -> dict[str, Any]:
    file = sidecar_name(index)
    return {"index": index, "file": file, "sha256": save_fold_stats(out / file, stats),
            "n_train": n_train, "components": [int(x.components.shape[1]) for x in stats.layers],
            "scale": round(stats.scale, 6)}


def _block(entries: list[dict[str, Any]], distance: np.ndarray, logits: np.ndarray,
           target: float, score: str) -> tuple[dict[str, Any], np.ndarray]:
    """The ``ood_gate`` block and the out-of-fold gate scores."""
    threshold, logit_threshold = choose_thresholds(distance, logits, target)
    scores = combined_score(distance, logits, threshold, logit_threshold)
    block = {
        "method": GATE_METHOD, "feature_layer": FEATURE_LAYER, "score": score,
        "threshold": threshold, "outlier_threshold": logit_threshold,  # unrounded: exact
        "outlier_method": OUTLIER_METHOD, "outlier_kinds": list(OUTLIER_KINDS),
        "target_rejection": target, "oof_images": len(scores),
        "oof_rejection": round(float((scores > threshold).mean()), 6),
        "oof_distance_rejection": round(float((distance > threshold).mean()), 6),
        "oof_outlier_rejection": round(float((logits > logit_threshold).mean()), 6),
        "crossfit_rejection": None, "folds": entries}
    return block, scores


def fit_gate(out: Path, data: Prepared, results: list[FoldResult]) -> dict[str, Any]:
    """Fit every fold's statistics and outlier head, write the sidecars and
    ``oof_gate.csv``; the manifest's ``ood_gate`` block."""
    distance, logits = np.zeros(len(data.samples)), np.zeros(len(data.samples))
    entries = []
    for result in results:
        model = load_fold_model(FoldResult.weights(out, result.index), num_classes=2)
        train, held_out = data.folds != result.index, data.folds == result.index
        stats, distance[held_out], logits[held_out] = fit_fold_gate(
            model, data.config, data.images[torch.from_numpy(train)],
            data.images[torch.from_numpy(held_out)], seed=result.index)
        entries.append(_sidecar_entry(out, result.index, stats, int(train.sum())))
        log.info("gate: fold %d statistics and outlier head fitted (median held-out distance "
                 "%.3f)", result.index + 1, stats.scale)
    block, oof = _block(
        entries, distance, logits, TARGET_REJECTION,
        "mean over folds of distance / fold median out-of-fold distance, raised by the mean "
        "outlier logit's excess over its threshold")
    block["crossfit_rejection"] = round(crossfit_rejection(distance, data.folds,
                                                           logits=logits), 6)
    _write_oof(out / OOF_GATE_FILE, data, oof, block["threshold"])
    log.info("gate: threshold %.4f rejects %.2f %% of out-of-fold images (distance %.2f %%, "
             "outlier head %.2f %%; cross-fitted %.2f %%)", block["threshold"],
             100 * block["oof_rejection"], 100 * block["oof_distance_rejection"],
             100 * block["oof_outlier_rejection"], 100 * block["crossfit_rejection"])
    return block


def _write_oof(path: Path, data: Prepared, scores: np.ndarray, threshold: float) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold", "gate_score", "not_assessable"])
        for sample, fold, score in zip(data.samples, data.folds, scores, strict=True):
            writer.writerow([str(sample.path), sample.label, int(fold), f"{score:.6f}",
                             int(score > threshold)])


def file_units(config: PreprocessConfig, paths: Sequence[Path]) -> torch.Tensor:
    """(N, 1, S, S) unit images of image files (DICOM or PNG), serving's decoding."""
    return torch.stack([torch.from_numpy(load_unit_image(p, size=config.size,
                                                         resize=config.resize))[None]
                        for p in paths])


def add_gate(model_dir: Path, fit: Sequence[Path], held_out: Sequence[Path],
             target: float = TARGET_REJECTION) -> dict[str, Any]:
    """Give an existing ensemble a gate from image files: statistics and outlier heads fitted
    on ``fit``, scaled and thresholded on ``held_out`` (images the fit did not see). Rewrites
    ``ensemble.json``; returns its ``ood_gate`` block."""
    manifest = load_manifest(model_dir)
    config = manifest.preprocess_config()
    fit_units, held_units = file_units(config, fit), file_units(config, held_out)
    entries, distances, logits = [], [], []
    for fold, path in zip(manifest.folds, manifest.fold_paths(model_dir), strict=True):
        model = load_fold_model(path, len(manifest.class_names))
        stats, distance, logit = fit_fold_gate(model, config, fit_units, held_units,
                                               seed=fold.index)
        distances.append(distance)
        logits.append(logit)
        entries.append(_sidecar_entry(model_dir, fold.index, stats, len(fit)))
    block, _ = _block(entries, np.mean(distances, axis=0), np.mean(logits, axis=0), target,
                         "mean over folds of distance / fold median calibration distance, "
                         "raised by the mean outlier logit's excess over its threshold")
    write_manifest(model_dir, dataclasses.replace(manifest, ood_gate=block))
    return block
