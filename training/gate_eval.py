"""The image gate in ``cxr-triage evaluate``: how many images it refuses, of each kind.

Images of the manifest's classes are in-distribution (goal: at most 2 % refused); images under
a ``non-chest`` class or folder (``non_chest`` and ``nonchest`` too) are not frontal chest
radiographs (goal: at least 95 % refused). Scores come from the same per-fold features the
worker uses (:func:`training.gate_fit.image_features`, fp32).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import Sample, load_cache
from training.gate_fit import image_features
from training.manifest import EnsembleManifest
from training.model import load_fold_model
from training.ood import Gate, load_gate

NON_CHEST_LABELS = ("non-chest", "non_chest", "nonchest")
IN_DISTRIBUTION_GOAL = 0.02
NON_CHEST_GOAL = 0.95


def split_non_chest(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(labelled chest images, non-chest images)."""
    chest = [s for s in samples if s.label not in NON_CHEST_LABELS]
    return chest, [s for s in samples if s.label in NON_CHEST_LABELS]


def gate_scores(gate: Gate, manifest: EnsembleManifest, model_dir: Path,
                units: torch.Tensor) -> np.ndarray:
    """(N,) gate score of cached unit images (N, 1, S, S)."""
    config = manifest.preprocess_config()
    features = [image_features(load_fold_model(path, len(manifest.class_names)), units, config)
                for path in manifest.fold_paths(model_dir)]
    return gate.scores(features)


def evaluate_gate(manifest: EnsembleManifest, model_dir: Path, chest: torch.Tensor,
                  chest_samples: Sequence[Sample], non_chest: Sequence[Sample],
                  out: Path) -> dict[str, Any]:
    """Rejection rates (``gate_*`` keys) and ``gate_predictions.csv``; {} with no gate."""
    gate = load_gate(model_dir, manifest.ood_gate, verify_hashes=False)
    if gate is None:
        return {"gate": False}
    in_scores = gate_scores(gate, manifest, model_dir, chest)
    result: dict[str, Any] = {
        "gate": True, "gate_threshold": gate.threshold, "gate_n_chest": len(in_scores),
        "gate_chest_rejection": float((in_scores > gate.threshold).mean())}
    rows = [(s, float(v)) for s, v in zip(chest_samples, in_scores, strict=True)]
    if non_chest:
        units = load_cache(non_chest, manifest.preprocess_config())
        out_scores = gate_scores(gate, manifest, model_dir, units)
        result.update(gate_n_non_chest=len(out_scores),
                      gate_non_chest_rejection=float((out_scores > gate.threshold).mean()))
        rows += [(s, float(v)) for s, v in zip(non_chest, out_scores, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gate_predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "gate_score", "not_assessable"])
        for sample, score in rows:
            writer.writerow([str(sample.path), sample.label, f"{score:.6f}",
                             int(score > gate.threshold)])
    return result


def gate_line(summary: dict[str, Any]) -> str | None:
    """What ``evaluate`` prints about the gate (``None`` without a non-chest set)."""
    if not summary.get("gate"):
        return "image gate: off (the ensemble has no gate statistics)"
    if "gate_non_chest_rejection" not in summary:
        return None
    return (f"image gate (threshold {summary['gate_threshold']:.4f}): not assessable "
            f"{100 * summary['gate_chest_rejection']:.1f} % of {summary['gate_n_chest']} chest "
            f"images (goal <= {100 * IN_DISTRIBUTION_GOAL:.0f} %), "
            f"{100 * summary['gate_non_chest_rejection']:.1f} % of "
            f"{summary['gate_n_non_chest']} non-chest images (goal >= "
            f"{100 * NON_CHEST_GOAL:.0f} %)")


def gate_report(summary: dict[str, Any]) -> str:
    """The report's gate section (empty without the gate)."""
    if not summary.get("gate"):
        return "\n## Image gate\n\nOff: the ensemble has no gate statistics.\n"
    lines = ["", "## Image gate (not assessable)", "",
             f"- threshold {summary['gate_threshold']:.4f} (from training's out-of-fold images)",
             f"- chest images of this set refused: {100 * summary['gate_chest_rejection']:.2f} "
             f"% of {summary['gate_n_chest']} (goal <= {100 * IN_DISTRIBUTION_GOAL:.0f} %)"]
    if "gate_non_chest_rejection" in summary:
        lines.append(f"- non-chest images refused: "
                     f"{100 * summary['gate_non_chest_rejection']:.2f} % of "
                     f"{summary['gate_n_non_chest']} (goal >= {100 * NON_CHEST_GOAL:.0f} %)")
    lines += ["- per image: `gate_predictions.csv`", ""]
    return "\n".join(lines)
