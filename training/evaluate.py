"""``cxr-triage evaluate``: the ensemble (mean of fold softmaxes) on an external labelled set."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from training import engine, report
from training.data import CachedImages, Sample, discover, limit_per_class, load_cache
from training.gate_eval import NON_CHEST_LABELS, evaluate_gate, gate_report, split_non_chest
from training.manifest import EnsembleManifest, load_manifest
from training.metrics import (
    Confusion,
    auc,
    auc_bootstrap_interval,
    binary_metrics,
    brier,
    confusion,
    roc,
    wilson_interval,
)
from training.model import load_fold_model

log = logging.getLogger(__name__)


def fold_probabilities(manifest: EnsembleManifest, model_dir: Path, images: torch.Tensor,
                       labels: np.ndarray, *, device: str, batch_size: int) -> np.ndarray:
    """(folds, N) positive-class probability of every fold model for every image."""
    config = manifest.preprocess_config()
    dev = engine.resolve_device(device)
    amp = engine.resolve_amp("auto", dev) if dev.type == "cuda" else None  # exact on CPU
    loader = DataLoader(CachedImages(images, labels, engine.EvalTransform(config)),
                        batch_size=batch_size)
    rows = []
    for path in manifest.fold_paths(model_dir):
        model = load_fold_model(path, len(manifest.class_names), str(dev))
        probs, _ = engine.predict(model, loader, device=dev, amp=amp)
        rows.append(probs[:, manifest.positive_index])
        log.info("scored %d images with %s", len(labels), path.name)
    return np.stack(rows)


def _write_predictions(path: Path, samples: list[Sample], mean: np.ndarray, std: np.ndarray,
                       threshold: float) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "p_covid_mean", "p_covid_std", "flagged"])
        for sample, m, s in zip(samples, mean, std, strict=True):
            writer.writerow([str(sample.path), sample.label, f"{m:.6f}", f"{s:.6f}",
                             int(m >= threshold)])


def _rows(per_fold: np.ndarray, mean: np.ndarray, y: np.ndarray,
          threshold: float) -> list[report.Row]:
    rows = [report.Row(f"Fold {k + 1} model", confusion(y, p > 0.5), auc(y, p))
            for k, p in enumerate(per_fold)]
    rows.append(report.Row("Ensemble (p > 0.5)", confusion(y, mean > 0.5), auc(y, mean)))
    rows.append(report.Row(f"Ensemble (p >= {threshold:.3f})", confusion(y, mean >= threshold),
                           auc(y, mean)))
    return rows


def _report_text(model_dir: Path, data: Path, manifest: EnsembleManifest, rows: list[report.Row],
                 summary: dict[str, Any]) -> str:
    return "\n".join([
        f"# External evaluation of ensemble {manifest.model_version}", "",
        f"- model: `{model_dir}` ({len(manifest.folds)} folds, {manifest.input_size} px)",
        f"- data: `{data}` ({summary['n']} images: {summary['n_pos']} covid, "
        f"{summary['n'] - summary['n_pos']} normal)",
        f"- threshold from training (target sensitivity "
        f"{manifest.threshold_target_sensitivity:.2f}): {manifest.threshold:.4f}", "",
        "## Metrics", "", report.markdown_table(rows), "",
        "Fold rows: each fold model alone at p > 0.5 (the spread across folds). Ensemble rows: "
        "mean of the fold probabilities.", "",
        f"- ensemble AUC: **{summary['auc']:.4f}**",
        f"- at the threshold ({manifest.threshold:.4f}): sensitivity "
        f"{summary['sensitivity']:.4f} {_ci(summary['sensitivity_ci'])}, specificity "
        f"{summary['specificity']:.4f} {_ci(summary['specificity_ci'])}, accuracy "
        f"{summary['accuracy']:.4f} {_ci(summary['accuracy_ci'])}",
        f"- ensemble AUC interval: {_ci(summary['auc_ci'])} (stratified bootstrap)"
        + (f"; **WARNING: below 0.5, {BELOW_CHANCE}**" if summary["auc"] < 0.5 else ""),
        f"- Brier score: {summary['brier']:.4f} (0 is perfect, 0.25 is a constant 0.5)",
        f"- mean per-image std of p(covid) across folds: {summary['mean_std']:.4f}; "
        f"fold AUC range {summary['fold_auc_min']:.4f} to {summary['fold_auc_max']:.4f}", "",
        "![confusion matrix](confusion_matrix.png)", "", "![ROC](roc.png)", "",
        "![reliability](reliability.png)", "",
    ])


def _plots(out: Path, data: Path, rows: list[report.Row], per_fold: np.ndarray,
           mean: np.ndarray, y: np.ndarray, manifest: EnsembleManifest,
           summary: dict[str, Any]) -> None:
    report.plot_confusions(out / "confusion_matrix.png", rows[-2:], manifest.class_names)
    curves = [("ensemble", *roc(y, mean), summary["auc"])]
    report.plot_roc(out / "roc.png", curves,
                    (1 - summary["specificity"], summary["sensitivity"],
                     f"threshold {manifest.threshold:.3f}"),
                    faint=[roc(y, p) for p in per_fold],
                    faint_label=f"single folds (AUC {summary['fold_auc_min']:.3f} to "
                    f"{summary['fold_auc_max']:.3f})",
                    title=f"ROC of the ensemble on {data.name}")
    report.plot_reliability(out / "reliability.png", y, mean, summary["brier"])


BELOW_CHANCE = "worse than chance: check labels, or a source confound"


def _intervals(c: Confusion, y: np.ndarray, mean: np.ndarray) -> dict[str, Any]:
    """95 % intervals: Wilson for the proportions at the threshold, bootstrap for the AUC."""
    return {"sensitivity_ci": wilson_interval(c.tp, c.tp + c.fn),
            "specificity_ci": wilson_interval(c.tn, c.tn + c.fp),
            "accuracy_ci": wilson_interval(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
            "auc_ci": auc_bootstrap_interval(y, mean)}


def _ci(interval: tuple[float, float]) -> str:
    return f"(95 % CI {interval[0]:.4f} to {interval[1]:.4f})"


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line result ``cxr-triage evaluate`` prints, with a warning below chance."""
    line = (f"AUC {summary['auc']:.4f} {_ci(summary['auc_ci'])}; accuracy at the threshold "
            f"({summary['threshold']:.4f}): {summary['accuracy']:.4f} "
            f"{_ci(summary['accuracy_ci'])}, sensitivity {summary['sensitivity']:.4f} "
            f"{_ci(summary['sensitivity_ci'])}, specificity {summary['specificity']:.4f} "
            f"{_ci(summary['specificity_ci'])}; Brier {summary['brier']:.4f}")
    if summary["auc"] < 0.5:
        line += f"\nWARNING: AUC {summary['auc']:.4f} is below 0.5: {BELOW_CHANCE}"
    return line


def evaluate_ensemble(model_dir: Path, data: Path, out: Path, *, device: str = "auto",
                      batch_size: int = 16, limit: int | None = None) -> dict[str, Any]:
    """Score ``data`` with the ensemble in ``model_dir``; write report, CSVs and plots to ``out``.

    Returns the headline numbers (AUC, metrics at the manifest threshold, Brier, spread).
    """
    manifest = load_manifest(model_dir)
    # a non-chest class or folder measures the image gate (training.gate_eval)
    samples, non_chest = split_non_chest(limit_per_class(
        discover(data, (*manifest.class_names, *NON_CHEST_LABELS)), limit, manifest.seed))
    y = np.array([int(s.label == manifest.positive_class) for s in samples])
    images = load_cache(samples, manifest.preprocess_config())
    classes = np.array([manifest.class_names.index(s.label) for s in samples])
    per_fold = fold_probabilities(manifest, model_dir, images, classes, device=device,
                                  batch_size=batch_size)
    mean, std = per_fold.mean(axis=0), per_fold.std(axis=0)
    rows = _rows(per_fold, mean, y, manifest.threshold)
    fold_aucs = [r.auc for r in rows[:-2]]
    summary: dict[str, Any] = {
        "n": len(y), "n_pos": int(y.sum()), "auc": auc(y, mean), "brier": brier(y, mean),
        "mean_std": float(std.mean()), "threshold": manifest.threshold,
        "fold_auc_min": float(np.nanmin(fold_aucs)), "fold_auc_max": float(np.nanmax(fold_aucs)),
        **binary_metrics(rows[-1].counts),
        **_intervals(rows[-1].counts, y, mean),
    }
    summary.update(evaluate_gate(manifest, model_dir, images, samples, non_chest, out))
    out.mkdir(parents=True, exist_ok=True)
    report.write_metrics_csv(out / "metrics.csv", rows)
    _write_predictions(out / "predictions.csv", samples, mean, std, manifest.threshold)
    _plots(out, data, rows, per_fold, mean, y, manifest, summary)
    (out / "report.md").write_text(_report_text(model_dir, data, manifest, rows, summary)
                                   + gate_report(summary), encoding="utf-8")
    return summary
