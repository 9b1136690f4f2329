"""int8 ensemble graphs: post-training quantization with NNCF, calibrated on training images.

``cxr-triage model quantize`` takes the fp32 OpenVINO graph of the fold ensemble (all
outputs: probabilities, the gate's pooled features and the Grad-CAMs; the one the worker cached
in ``TRIAGE_OPENVINO_CACHE_DIR``, converted when there is none), quantizes it with NNCF on
a few hundred real training images, and caches it beside the fp32 graph in
``TRIAGE_OPENVINO_CACHE_DIR``. A sidecar JSON records the weights it was built from (the fold
SHA-256s), the calibration source and the tool versions; a graph whose weights differ from the
model's is stale and never used, so a retrained model needs a new ``quantize`` run (``auto``
falls back to bf16 or fp32 until then, and says so).

Decisions stay equal to fp32 because the ensemble re-scores in fp32 every image whose int8
probability or gate score lies near its threshold. The margins come from the graph itself: the
build scores up to ``check`` training images it was not calibrated on through both the fp32 and
the int8 graph and records the largest differences, of the mean probability and of the gate
score; the int8 path re-checks within twice those (never less than ``TRIAGE_EXACT_MARGIN`` and
``TRIAGE_GATE_EXACT_MARGIN``). ``auto`` takes int8 only when those margins re-score few images
(:meth:`worker.score.precision.Int8Graph.auto_refusal`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.durable import replace_json
from common.hardware import Capabilities, detect
from worker.score.openvino import (
    OpenVinoError,
    Runner,
    compile_graph,
    convert_ensemble,
    fp32_graph_cached,
    import_openvino,
    save_graph,
)
from worker.score.precision import (
    DEFAULT_KEEP,
    DEFAULT_RANGES,
    GRAPH_FORMAT,
    INT8,
    RANGES,
    Int8Graph,
    PrecisionError,
    check_stages,
    int8_graph,
    weights_digest,
)
from worker.settings import InferenceSettings

logger = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size
DEFAULT_CHECK_IMAGES = 200  # images the build measures the int8 error on
ERROR_SAFETY = 2.0  # the re-check margins are this many times the largest error measured
_STAGE = re.compile(r"\.folds\.\d+\.(layer\d)\.")


def _hint(rest: str) -> str:
    """The compile precision of an int8 graph whose float parts run in ``rest``."""
    return "bf16" if rest == "bf16" else INT8


def rest_precision(caps: Capabilities) -> str:
    """What the kept (unquantized) parts of a graph built here compute in: bf16 with AMX,
    where it is native and fast, fp32 elsewhere (without AMX, bf16 can be slower than fp32)."""
    return "bf16" if caps.amx and caps.native_bf16 else "fp32"


def compile_int8(graph: Int8Graph, *, threads: int = 0) -> Runner:
    """Compile a ready int8 graph for the CPU."""
    if not graph.ready:
        raise OpenVinoError(graph.reason)
    ov = import_openvino()
    started = time.monotonic()
    run = compile_graph(ov.Core().read_model(str(graph.path)), precision=_hint(graph.rest),
                        threads=threads)
    logger.info("OpenVINO int8 graph %s ready in %.1f s", graph.path.name,
                time.monotonic() - started)
    return run


def calibration_split(data: Path, images: int, check: int, seed: int = 0
                      ) -> tuple[list[Any], list[Any]]:
    """(calibration, check) labelled images of ``data`` (any layout training reads), chosen
    reproducibly with the classes as balanced as they allow: up to ``images`` calibrate and up
    to ``check`` others measure the error, at least half of a small data set (the margins are
    only as good as the images they were measured on); ``check`` is the calibration images
    when no others are left."""
    from training.data import discover

    rng = random.Random(seed)
    by_class: dict[str, list[Any]] = {}
    for sample in sorted(discover(data), key=lambda s: str(s.path)):
        by_class.setdefault(sample.label, []).append(sample)
    for members in by_class.values():
        rng.shuffle(members)
    ordered: list[Any] = []  # the classes interleaved
    while any(by_class.values()):
        ordered.extend(members.pop() for members in by_class.values() if members)
    total = len(ordered)
    count = min(total, images) if total < 2 else max(
        1, min(images, total - min(check, total // 2)))
    calibration = ordered[:count]
    return calibration, ordered[count:count + check] or calibration


def score_graph(run: Runner, tensors: list[Any], gate: Any) -> tuple[Any, Any]:
    """(N,) ensemble mean probabilities and gate scores (``None`` without a gate), batch 8."""
    import numpy as np
    import torch

    means, scores = [], []
    for start in range(0, len(tensors), 8):
        probs, features, _ = run(torch.from_numpy(np.concatenate(tensors[start:start + 8])))
        means.append(probs.mean(dim=0).numpy())
        if gate is not None:
            scores.append(gate.scores([f.double().numpy() for f in features]))
    return np.concatenate(means), np.concatenate(scores) if gate is not None else None


def measure_error(graph: Any, quantized: Any, tensors: list[Any], *, threshold: float,
                  gate: Any, rest: str = "fp32") -> dict[str, Any]:
    """The int8 graph (its float parts in ``rest``, as it will run) against the fp32 graph on
    ``tensors``: largest differences, the margins that follow and the share of these images
    those margins would re-score in fp32."""
    exact = score_graph(compile_graph(graph, precision="fp32"), tensors, gate)
    rough = score_graph(compile_graph(quantized, precision=_hint(rest)), tensors, gate)
    return error_summary(rough, exact, threshold=threshold, gate=gate)


def error_summary(rough: tuple[Any, Any], exact: tuple[Any, Any], *, threshold: float,
                  gate: Any) -> dict[str, Any]:
    """The sidecar's ``error`` block from (probabilities, gate scores) of both graphs."""
    import numpy as np

    (rough_p, rough_s), (exact_p, exact_s) = rough, exact
    defaults = InferenceSettings()
    max_dp = float(np.abs(rough_p - exact_p).max())
    exact_margin = max(defaults.exact_margin, ERROR_SAFETY * max_dp)
    close = np.abs(rough_p - threshold) < exact_margin
    near_default = np.abs(exact_p - threshold) < defaults.exact_margin
    deviation, gate_margin = None, 0.0
    if gate is not None:
        deviation = float(np.abs(rough_s - exact_s).max() / gate.threshold)
        gate_margin = max(defaults.gate_margin, ERROR_SAFETY * deviation)
        close |= np.abs(rough_s - gate.threshold) < gate_margin * gate.threshold
        near_default |= np.abs(exact_s - gate.threshold) < defaults.gate_margin * gate.threshold
    return {"images": len(rough_p), "max_dp": round(max_dp, 6),
            "mean_dp": round(float(np.abs(rough_p - exact_p).mean()), 6),
            "gate_deviation": None if deviation is None else round(deviation, 6),
            "exact_margin": round(exact_margin, 6), "gate_margin": round(gate_margin, 6),
            "rescore_share": round(float(close.mean()), 6),
            "default_margin_share": round(float(near_default.mean()), 6),
            "safety": ERROR_SAFETY, "against": "the fp32 OpenVINO graph of the same folds"}


def _stage_of(convolution: Any) -> str | None:
    """The stage of a converted convolution, read from the ReLU it feeds (the convolutions
    themselves lose their module names when batch norm is folded into them): walk forward
    through bias and residual additions to the first ReLU."""
    frontier, seen = [convolution], 0
    while frontier and seen < 16:
        node = frontier.pop(0)
        seen += 1
        for output in node.outputs():
            for target in output.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_type_name() == "Relu":
                    match = _STAGE.search(consumer.get_friendly_name())
                    return match.group(1) if match else "stem"
                frontier.append(consumer)
    return None


def kept_convolutions(graph: Any, keep: tuple[str, ...]) -> list[str]:
    """Names of the convolutions of ``graph`` in the stages ``keep`` (of ``STAGES``)."""
    try:
        keep = check_stages(keep)
    except PrecisionError as exc:
        raise OpenVinoError(str(exc)) from exc
    if not keep:
        return []
    return [op.get_friendly_name() for op in graph.get_ops()
            if op.get_type_name() == "Convolution" and _stage_of(op) in keep]


def quantize_graph(graph: Any, tensors: list[Any], keep: tuple[str, ...] = DEFAULT_KEEP,
                   ranges: str = DEFAULT_RANGES) -> Any:
    """NNCF post-training quantization of a converted ensemble, calibrated on ``tensors``
    (one per step). The heads (a 2048 x 2 matrix product per fold) and the convolutions of
    the stages in ``keep`` stay in floating point. ``ranges`` (of :data:`RANGES`) is how the
    activation ranges are estimated over the calibration images."""
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf = _nncf()
    if ranges not in RANGES:
        raise OpenVinoError(f"activation ranges {ranges!r}: use {', '.join(RANGES)}")
    scope = nncf.IgnoredScope(types=["MatMul"], names=kept_convolutions(graph, keep))
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, RANGES[ranges]))
    with torch.inference_mode():
        return nncf.quantize(graph, nncf.Dataset(tensors), subset_size=len(tensors),
                             ignored_scope=scope, advanced_parameters=advanced)


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise OpenVinoError("int8 quantization needs NNCF: pip install -c constraints.txt "
                            "nncf") from exc
    return nncf


def model_tensors(manifest: Any, paths: list[Path]) -> list[Any]:
    """(1, 3, H, W) numpy inputs of ``paths`` through the model's own preprocessing."""
    from training.preprocessing import preprocess

    config = manifest.preprocess_config()
    return [preprocess(path, config).unsqueeze(0).numpy() for path in paths]


def fp32_graph(model_dir: Path, manifest: Any, cache_dir: Path | None) -> Any:
    """The fp32 OpenVINO graph of all folds of ``model_dir``: the one the worker cached in
    ``cache_dir``, or converted (and cached there) when there is none."""
    from training.model import load_fold_model

    def convert() -> Any:
        models = [load_fold_model(p, num_classes=len(manifest.class_names), device="cpu")
                  for p in manifest.fold_paths(model_dir)]
        return convert_ensemble(models, positive=manifest.positive_index,
                                size=manifest.input_size)

    if cache_dir is None:
        return convert()
    return fp32_graph_cached(cache_dir, manifest.model_version, manifest.input_size, convert)


def quantize_ensemble(model_dir: Path, data: Path, cache_dir: Path, *,
                      images: int = DEFAULT_CALIBRATION_IMAGES,
                      check: int = DEFAULT_CHECK_IMAGES, force: bool = False,
                      keep: tuple[str, ...] = DEFAULT_KEEP, ranges: str = DEFAULT_RANGES
                      ) -> Int8Graph:
    """Build (or keep, when current, made by the same recipe and not ``force``) the int8 graph
    of ``model_dir``: the stages in ``keep`` stay in floating point (bf16 on AMX, else fp32:
    :func:`rest_precision`), activation ranges as ``ranges`` says.

    Calibration: ``images`` training images of ``data`` through training's preprocessing,
    one per calibration step (:func:`quantize_graph`). Then the error is measured on up to
    ``check`` other images of ``data`` (the calibration images when there are none).
    """
    from training.manifest import load_manifest
    from training.ood import load_gate

    manifest = load_manifest(model_dir, verify_hashes=True)
    hashes = [fold.sha256 for fold in manifest.folds]
    current = int8_graph(cache_dir, manifest.model_version, manifest.input_size, hashes)
    rest = rest_precision(detect(light=True))
    if (current.ready and current.error is not None and not force
            and current.recipe == (keep, ranges, rest)):
        return current
    nncf = _nncf()
    started = time.monotonic()
    samples, held_out = calibration_split(data, images, check)
    config = manifest.preprocess_config()
    tensors = model_tensors(manifest, [s.path for s in samples])
    graph = fp32_graph(model_dir, manifest, cache_dir)
    quantized = quantize_graph(graph, tensors, keep, ranges)
    measured = time.monotonic()
    error = measure_error(graph, quantized, model_tensors(manifest, [s.path for s in held_out]),
                          threshold=manifest.threshold,
                          gate=load_gate(model_dir, manifest.ood_gate, verify_hashes=False),
                          rest=rest)
    error["check_images"] = ("held out from calibration" if held_out is not samples else
                             "the calibration images (the data has no others)")
    error["measure_s"] = round(time.monotonic() - measured, 1)
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
        "method": "NNCF post-training quantization (default preset, fp32 heads"
                  + (f", {'/'.join(keep)} kept in {rest}" if keep else "")
                  + f", activation ranges {ranges})",
        "kept": list(keep), "ranges": ranges, "rest_precision": rest,
        "error": error,
        "nncf": nncf.__version__, "openvino": ov.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_s": round(time.monotonic() - started, 1),
    }
    replace_json(current.path.with_suffix(".json"), meta)
    logger.info("ensemble %s: int8 graph built on %d images in %.0f s: %s; on %d check images "
                "it strays by up to %.4f in probability and %s of the gate threshold; margins "
                "%.3f / %.0f%% re-score %.0f%% of them", manifest.model_version, len(samples),
                meta["build_s"], current.path, error["images"], error["max_dp"],
                "n/a" if error["gate_deviation"] is None else f"{error['gate_deviation']:.0%}",
                error["exact_margin"], 100 * error["gate_margin"],
                100 * error["rescore_share"])
    return int8_graph(cache_dir, manifest.model_version, manifest.input_size, hashes)
