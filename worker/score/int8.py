"""int8 ensemble graphs: post-training quantization with NNCF, calibrated on training images.

``cxr-triage model quantize`` converts the fp32 fold ensemble to one OpenVINO graph (all
outputs: probabilities, the gate's pooled features and the Grad-CAMs), quantizes it with NNCF on
a few hundred real training images, and caches it beside the fp32 graph in
``TRIAGE_OPENVINO_CACHE_DIR``. A sidecar JSON records the weights it was built from (the fold
SHA-256s), the calibration source and the tool versions; a graph whose weights differ from the
model's is stale and never used, so a retrained model needs a new ``quantize`` run (``auto``
falls back to bf16 or fp32 until then, and says so). Decisions stay equal to fp32 because the
ensemble re-scores in fp32 every image whose int8 probability lies within
``TRIAGE_EXACT_MARGIN`` of the threshold.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.score.openvino import (
    OpenVinoError,
    Runner,
    compile_graph,
    convert_ensemble,
    import_openvino,
    save_graph,
)
from worker.score.precision import GRAPH_FORMAT, INT8, Int8Graph, int8_graph, weights_digest

logger = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size


def compile_int8(graph: Int8Graph, *, threads: int = 0) -> Runner:
    """Compile a ready int8 graph for the CPU."""
    if not graph.ready:
        raise OpenVinoError(graph.reason)
    ov = import_openvino()
    started = time.monotonic()
    run = compile_graph(ov.Core().read_model(str(graph.path)), precision=INT8, threads=threads)
    logger.info("OpenVINO int8 graph %s ready in %.1f s", graph.path.name,
                time.monotonic() - started)
    return run


def calibration_samples(data: Path, count: int, seed: int = 0) -> list[Any]:
    """Up to ``count`` labelled images of ``data`` (any layout training reads), the classes
    as balanced as they allow, chosen reproducibly."""
    from training.data import discover

    samples = discover(data)
    rng = random.Random(seed)
    by_class: dict[str, list[Any]] = {}
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_class.setdefault(sample.label, []).append(sample)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[Any] = []
    while len(chosen) < count and any(by_class.values()):
        for members in by_class.values():
            if members and len(chosen) < count:
                chosen.append(members.pop())
    return chosen


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise OpenVinoError("int8 quantization needs NNCF: pip install -c constraints.txt "
                            "nncf") from exc
    return nncf


def quantize_ensemble(model_dir: Path, data: Path, cache_dir: Path, *,
                      images: int = DEFAULT_CALIBRATION_IMAGES, force: bool = False
                      ) -> Int8Graph:
    """Build (or keep, when current and not ``force``) the int8 graph of ``model_dir``.

    Calibration: ``images`` training images of ``data`` through training's preprocessing,
    one per calibration step. The heads (a 2048 x 2 matrix product per fold) stay fp32: they
    cost nothing and sit right before the probability.
    """
    import torch

    from training.manifest import load_manifest
    from training.model import load_fold_model
    from training.preprocessing import load_unit_image, to_model_tensor

    manifest = load_manifest(model_dir, verify_hashes=True)
    hashes = [fold.sha256 for fold in manifest.folds]
    current = int8_graph(cache_dir, manifest.model_version, manifest.input_size, hashes)
    if current.ready and not force:
        return current
    nncf = _nncf()
    started = time.monotonic()
    samples = calibration_samples(data, images)
    config = manifest.preprocess_config()
    tensors = [to_model_tensor(load_unit_image(s.path, size=config.size, resize=config.resize),
                               **config.to_dict()).unsqueeze(0).numpy() for s in samples]
    models = [load_fold_model(p, num_classes=len(manifest.class_names), device="cpu")
              for p in manifest.fold_paths(model_dir)]
    graph = convert_ensemble(models, positive=manifest.positive_index,
                             size=manifest.input_size)
    del models
    with torch.inference_mode():
        quantized = nncf.quantize(graph, nncf.Dataset(tensors), subset_size=len(tensors),
                                  ignored_scope=nncf.IgnoredScope(types=["MatMul"]))
    save_graph(quantized, current.path)
    ov = import_openvino()
    meta = {
        "model_version": manifest.model_version, "weights_sha256": weights_digest(hashes),
        "input_size": manifest.input_size, "graph_format": GRAPH_FORMAT,
        "outputs": ["probabilities (folds, B)", "pooled stage features (folds, B, 3840)",
                    "Grad-CAM before ReLU (folds, B, h, w)"],
        "calibration": {
            "source": str(Path(data).resolve()), "images": len(samples),
            "per_class": {label: sum(s.label == label for s in samples)
                          for label in sorted({s.label for s in samples})},
            "files": [str(s.path.resolve()) for s in samples],
            "selection": "classes interleaved, shuffled with seed 0",
            "preprocessing": config.to_dict(),
        },
        "method": "NNCF post-training quantization (default preset, fp32 heads)",
        "nncf": nncf.__version__, "openvino": ov.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_s": round(time.monotonic() - started, 1),
    }
    sidecar = current.path.with_suffix(".json")
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(sidecar)
    logger.info("ensemble %s: int8 graph built on %d images in %.0f s: %s",
                manifest.model_version, len(samples), meta["build_s"], current.path)
    return int8_graph(cache_dir, manifest.model_version, manifest.input_size, hashes)
