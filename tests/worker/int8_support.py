"""A tiny random-weight ensemble with its int8 graph, built by the real NNCF quantizer.

Calibration uses a handful of the shared development PNGs (real training images), so the
graph is built the way ``cxr-triage model quantize`` builds it, in seconds at 64 px.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.worker.conftest import build_ensemble
from training.manifest import load_manifest, write_manifest
from worker.score.int8 import quantize_ensemble
from worker.score.precision import Int8Graph

CALIBRATION_IMAGES = 12


def quantized_ensemble(root: Path, shared_data: Path, *, threshold: float = 0.5
                       ) -> tuple[Path, Path, Int8Graph]:
    """(model folder, OpenVINO cache, int8 graph) of a two-fold 64 px ensemble."""
    model_dir, cache = root / "model", root / "ov"
    build_ensemble(model_dir, threshold=threshold, seed=7)
    graph = quantize_ensemble(model_dir, shared_data / "cxr", cache, images=CALIBRATION_IMAGES)
    return model_dir, cache, graph


def set_threshold(model_dir: Path, threshold: float) -> None:
    """Rewrite the manifest's threshold; the model version (and so the int8 graph) stays."""
    manifest = load_manifest(model_dir)
    write_manifest(model_dir, dataclasses.replace(manifest, threshold=threshold))
