"""Turning finished folds into the ensemble directory: threshold, manifest, report, plots."""

from __future__ import annotations

import csv
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.version import package_version
from training import report
from training.cv import FoldResult, Prepared, run_summary
from training.data import DEFAULT_CLASSES, POSITIVE_CLASS, file_sha256
from training.gate_fit import OOF_GATE_FILE, fit_gate
from training.manifest import EnsembleManifest, FoldEntry, model_version, write_manifest
from training.metrics import auc, binary_metrics, brier, confusion, roc, threshold_for_sensitivity
from training.model import ARCHITECTURE
from training.settings import TrainingSettings

log = logging.getLogger(__name__)


def fold_rows(results: list[FoldResult]) -> list[report.Row]:
    """Per-fold rows at the argmax decision (as in the paper) and the summed "Overlapped" row."""
    rows = []
    for r in results:
        y, p = np.array(r.labels), np.array(r.probs)
        rows.append(report.Row(f"Fold {r.index + 1}", confusion(y, p > 0.5), auc(y, p)))
    y_all = np.concatenate([r.labels for r in results])
    p_all = np.concatenate([r.probs for r in results])
    total = rows[0].counts
    for row in rows[1:]:
        total = total + row.counts
    rows.append(report.Row("Overlapped", total, auc(y_all, p_all)))
    return rows


def _write_oof(path: Path, data: Prepared, results: list[FoldResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold", "p_covid"])
        for r in results:
            for index, prob in zip(r.test_indices, r.probs, strict=True):
                sample = data.samples[index]
                writer.writerow([str(sample.path), sample.label, r.index, f"{prob:.6f}"])


def _build_manifest(
    settings: TrainingSettings, data: Prepared, results: list[FoldResult],
    rows: list[report.Row], threshold: tuple[float, float, float], gate: dict[str, Any],
) -> EnsembleManifest:
    folds = []
    for r, row in zip(results, rows, strict=False):
        file = FoldResult.weights(settings.out, r.index).name
        # NaN is not JSON: an undefined metric (e.g. precision with no positives) is null.
        metrics = {k: (None if math.isnan(v) else round(v, 6))
                   for k, v in row.values().items()}
        folds.append(FoldEntry(r.index, file, file_sha256(settings.out / file), metrics))
    return EnsembleManifest(
        architecture=ARCHITECTURE, input_size=data.config.size,
        preprocessing=data.config.to_dict(), class_names=list(DEFAULT_CLASSES),
        positive_class=POSITIVE_CLASS, threshold=threshold[0],
        threshold_target_sensitivity=settings.target_sensitivity,
        threshold_oof_specificity=round(threshold[2], 6), folds=folds,
        dataset_fingerprint=data.fingerprint, seed=settings.seed,
        package_version=package_version(),
        model_version=model_version([f.sha256 for f in folds]),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        not_for_clinical_use=settings.not_for_clinical_use, label=settings.label,
        training=run_summary(settings, results), ood_gate=gate,
    )


def _report_text(settings: TrainingSettings, manifest: EnsembleManifest, rows: list[report.Row],
                 threshold: tuple[float, float, float], n_images: int) -> str:
    t = manifest.training
    return "\n".join([
        f"# Cross-validation report ({manifest.created_at})", "",
        f"- data: `{settings.data}` ({n_images} images), fingerprint "
        f"`{manifest.dataset_fingerprint[:16]}`",
        f"- protocol: {t['folds']} folds (stratified, grouped by patient where known), "
        f"{t['epochs']} epochs, {manifest.input_size} px, weights `{t['weights']}`, "
        f"mode `{t['mode']}`, {t['optimizer']}, lr {t['lr']}, batch {t['batch_size']}, "
        f"device {t['device']}, precision {t['precision']}, seed {manifest.seed}",
        f"- training time: {t['time_s'] / 60:.1f} min (sum over folds)",
        f"- model_version `{manifest.model_version}`, package {manifest.package_version}", "",
        "## Table 1: held-out fold metrics (decision: argmax, i.e. p(covid) > 0.5)", "",
        report.markdown_table(rows), "",
        "Overlapped = metrics of the summed confusion matrix; its AUC pools all out-of-fold "
        "probabilities.", "",
        "## Triage threshold", "",
        f"Chosen on the out-of-fold probabilities for sensitivity >= "
        f"{settings.target_sensitivity:.2f}: threshold **{threshold[0]:.4f}** gives "
        f"sensitivity {threshold[1]:.4f} and specificity {threshold[2]:.4f}. The ensemble mean "
        "on new data is smoother than single-fold outputs, so re-check it with "
        "`cxr-triage evaluate` on an external set.", "",
        *_gate_text(manifest.ood_gate),
        "## Plots", "",
        "![confusion matrices](confusion_matrices.png)", "",
        "![training progress](training_progress.png)", "",
        "![ROC of out-of-fold predictions](roc_oof.png)", "",
        "![reliability of out-of-fold predictions](reliability_oof.png)", "",
    ])


def _gate_text(gate: dict[str, Any] | None) -> list[str]:
    if not gate:
        return []
    return [
        "## Image gate (not assessable)", "",
        f"{gate['method']} on {gate['feature_layer']} features; threshold "
        f"**{gate['threshold']:.4f}** on the gate score rejects "
        f"{100 * gate['oof_rejection']:.2f} % of the {gate['oof_images']} out-of-fold images "
        f"(target <= {100 * gate['target_rejection']:.0f} %); with each fold's threshold chosen "
        f"on the other folds only (cross-fitted): {100 * gate['crossfit_rejection']:.2f} %. "
        f"Per image: `{OOF_GATE_FILE}`.", "",
    ]


def finish_run(settings: TrainingSettings, data: Prepared,
               results: list[FoldResult]) -> EnsembleManifest:
    """Write threshold, ``ensemble.json``, ``report.md``, ``metrics.csv`` and the plots."""
    out = settings.out
    rows = fold_rows(results)
    y_all = np.concatenate([r.labels for r in results])
    p_all = np.concatenate([r.probs for r in results])
    threshold = threshold_for_sensitivity(y_all, p_all, settings.target_sensitivity)
    gate = fit_gate(out, data, results)
    manifest = _build_manifest(settings, data, results, rows, threshold, gate)
    write_manifest(out, manifest)
    report.write_metrics_csv(out / "metrics.csv", rows)
    _write_oof(out / "oof_predictions.csv", data, results)
    report.plot_confusions(out / "confusion_matrices.png", rows, DEFAULT_CLASSES)
    report.plot_history(out / "training_progress.png", [r.history for r in results])
    fpr, tpr = roc(y_all, p_all)
    point_spec = threshold[2]
    report.plot_roc(out / "roc_oof.png", [("out-of-fold", fpr, tpr, rows[-1].auc)],
                    (1 - point_spec, threshold[1], f"threshold {threshold[0]:.3f}"),
                    title="ROC of the out-of-fold predictions (all folds pooled)")
    report.plot_reliability(out / "reliability_oof.png", y_all, p_all, brier(y_all, p_all),
                            label="out-of-fold", title="Reliability of the out-of-fold predictions")
    (out / "report.md").write_text(
        _report_text(settings, manifest, rows, threshold, len(data.samples)), encoding="utf-8")
    overall = binary_metrics(rows[-1].counts)
    log.info("overlapped accuracy %.4f, AUC %.4f, threshold %.4f (spec %.4f); wrote %s",
             overall["accuracy"], rows[-1].auc, threshold[0], threshold[2], out)
    return manifest
