"""Fitting the image gate after cross-validation (``training.ood`` holds the statistics).

Per fold: the fold's weights give the pooled features of every image in one fp32 pass; the
statistics are fitted on the fold's training images and scaled on its held-out images; the
threshold is chosen on the pooled out-of-fold scores. Runs again on a resumed run, so an
ensemble trained before the gate existed gains it by re-running ``cxr-triage train``.
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
from training.manifest import EnsembleManifest, load_manifest, write_manifest
from training.model import load_fold_model
from training.ood import (
    FEATURE_LAYER,
    GATE_METHOD,
    TARGET_REJECTION,
    FoldStats,
    calibrate,
    choose_threshold,
    crossfit_rejection,
    features_and_logits,
    fit_fold_stats,
    save_fold_stats,
    sidecar_name,
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


def _fit_fold(out: Path, data: Prepared, index: int) -> tuple[FoldStats, np.ndarray]:
    """The fold's scaled statistics and the distances of its held-out images."""
    model = load_fold_model(FoldResult.weights(out, index), num_classes=2)
    features = image_features(model, data.images, data.config)
    train, held_out = data.folds != index, data.folds == index
    stats = calibrate(fit_fold_stats(features[train]), features[held_out])
    return stats, stats.distance(features[held_out])


def fit_gate(out: Path, data: Prepared, results: list[FoldResult]) -> dict[str, Any]:
    """Fit every fold's statistics, write the sidecars and ``oof_gate.csv``; the manifest's
    ``ood_gate`` block."""
    oof = np.zeros(len(data.samples))
    entries = []
    for result in results:
        stats, held = _fit_fold(out, data, result.index)
        oof[data.folds == result.index] = held / stats.scale
        file = sidecar_name(result.index)
        entries.append({"index": result.index, "file": file,
                        "sha256": save_fold_stats(out / file, stats),
                        "n_train": int((data.folds != result.index).sum()),
                        "components": [int(x.components.shape[1]) for x in stats.layers],
                        "scale": round(stats.scale, 6)})
        log.info("gate: fold %d statistics fitted (median held-out distance %.3f)",
                 result.index + 1, stats.scale)
    threshold = choose_threshold(oof)
    _write_oof(out / OOF_GATE_FILE, data, oof, threshold)
    rejected, crossfit = float((oof > threshold).mean()), crossfit_rejection(oof, data.folds)
    block = {
        "method": GATE_METHOD, "feature_layer": FEATURE_LAYER,
        "score": "mean over folds of distance / fold median out-of-fold distance",
        "threshold": round(threshold, 6), "target_rejection": TARGET_REJECTION,
        "oof_images": len(oof), "oof_rejection": round(rejected, 6),
        "crossfit_rejection": round(crossfit, 6),
        "folds": entries,
    }
    log.info("gate: threshold %.4f rejects %.2f %% of out-of-fold images (cross-fitted %.2f %%)",
             threshold, 100 * rejected, 100 * crossfit)
    return block


def _write_oof(path: Path, data: Prepared, scores: np.ndarray, threshold: float) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold", "gate_score", "not_assessable"])
        for sample, fold, score in zip(data.samples, data.folds, scores, strict=True):
            writer.writerow([str(sample.path), sample.label, int(fold), f"{score:.6f}",
                             int(score > threshold)])


def file_features(model_dir: Path, manifest: EnsembleManifest,
                  paths: Sequence[Path]) -> list[np.ndarray]:
    """Per fold, the (N, 3840) fp32 features of image files (DICOM or PNG), serving's decoding."""
    config = manifest.preprocess_config()
    units = torch.stack([torch.from_numpy(load_unit_image(p, size=config.size,
                                                          resize=config.resize))[None]
                         for p in paths])
    return [image_features(load_fold_model(path, len(manifest.class_names)), units, config)
            for path in manifest.fold_paths(model_dir)]


def add_gate(model_dir: Path, fit: Sequence[Path], held_out: Sequence[Path],
             target: float = TARGET_REJECTION) -> dict[str, Any]:
    """Give an existing ensemble a gate from image files: statistics fitted on ``fit``, scaled
    and thresholded on ``held_out`` (images the statistics did not see). Rewrites
    ``ensemble.json``; returns its ``ood_gate`` block."""
    manifest = load_manifest(model_dir)
    fitted, held = file_features(model_dir, manifest, fit), file_features(
        model_dir, manifest, held_out)
    entries, scores = [], []
    for fold, fit_features, held_features in zip(manifest.folds, fitted, held, strict=True):
        stats = calibrate(fit_fold_stats(fit_features), held_features)
        scores.append(stats.distance(held_features) / stats.scale)
        file = sidecar_name(fold.index)
        entries.append({"index": fold.index, "file": file,
                        "sha256": save_fold_stats(model_dir / file, stats),
                        "n_train": len(fit),
                        "components": [int(x.components.shape[1]) for x in stats.layers],
                        "scale": round(stats.scale, 6)})
    oof = np.mean(scores, axis=0)
    threshold = choose_threshold(oof, target)
    block = {"method": GATE_METHOD, "feature_layer": FEATURE_LAYER,
             "score": "mean over folds of distance / fold median calibration distance",
             "threshold": round(threshold, 6), "target_rejection": target,
             "oof_images": len(held_out),
             "oof_rejection": round(float((oof > threshold).mean()), 6),
             "crossfit_rejection": None, "folds": entries}
    write_manifest(model_dir, dataclasses.replace(manifest, ood_gate=block))
    return block
