"""OpenVINO backend: the whole fold ensemble compiled as one graph with three outputs.

Output 0 is each fold's positive-class probability (folds, B); output 1 is each fold's pooled
stage features (folds, B, 3840), which the image gate (:mod:`training.ood`) reads, so the gate
costs no second pass; output 2 is each fold's Grad-CAM before ReLU (folds, B, h, w), which the
result image draws (:mod:`worker.score.cam`). PERF-NOTES measured one graph of the 10-model
ensemble at 2.7 img/s in fp32 and 5.1 in bf16 on Zen 4 (torch: 1.9 and 4.0), and 1.42 against
1.07 in fp32 on Zen 3.

Converted graphs are cached in ``TRIAGE_OPENVINO_CACHE_DIR``, one per model version, input size
and kind (``f32``, or ``int8`` from :mod:`worker.score.int8`); only the first start converts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import TriageError
from training.ood import stage_outputs
from worker.score.cam import stage_cam
from worker.score.precision import graph_path

logger = logging.getLogger(__name__)
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the rest stays f32

# (B, 3, H, W) -> ((folds, B) probabilities, each fold's (B, 3840) pooled features, each
# fold's (B, h, w) Grad-CAM before ReLU, or None from a graph converted without it)
Runner = Callable[[torch.Tensor],
                  tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]]
OUTPUTS = 3  # a cached graph with fewer is converted again


class OpenVinoError(TriageError):
    """The OpenVINO backend is missing or its graph can't be built."""


def import_openvino() -> Any:
    """The ``openvino`` module, or an error that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoError("the OpenVINO backend needs the openvino package: "
                            "pip install -c constraints.txt openvino") from exc
    return openvino


class StackedFolds(nn.Module):
    """All folds in one module: (B, 3, H, W) -> (folds, B) probabilities, (folds, B, 3840)
    pooled stage features and (folds, B, h, w) Grad-CAMs, from one forward pass per fold."""

    def __init__(self, models: Sequence[nn.Module], positive: int) -> None:
        super().__init__()
        self.folds = nn.ModuleList(models)
        self.positive = positive

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, features, cams = [], [], []
        for model in self.folds:
            pooled, logits, last = stage_outputs(model, x)
            probs.append(torch.softmax(logits.float(), dim=1)[:, self.positive])
            features.append(pooled.float())
            cams.append(stage_cam(last, model, self.positive))
        return torch.stack(probs), torch.stack(features), torch.stack(cams)


def convert_ensemble(models: Sequence[nn.Module], *, positive: int, size: int) -> Any:
    """The fp32 ``openvino.Model`` of all folds (dynamic batch)."""
    ov = import_openvino()
    stacked = StackedFolds([m.to(torch.float32) for m in models], positive).eval()
    with torch.inference_mode():
        return ov.convert_model(stacked, example_input=torch.zeros(1, 3, size, size),
                                input=[(-1, 3, size, size)])


def save_graph(graph: Any, path: Path) -> None:
    """Write the IR with fp32 weights (``save_model`` would halve them to fp16 by default,
    and fp32 would no longer be fp32), atomically: a half-written graph is never read."""
    ov = import_openvino()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.xml")
    ov.save_model(graph, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    tmp.replace(path)


def compile_graph(graph: Any, *, precision: str, threads: int = 0) -> Runner:
    """Compile a converted graph for the CPU; ``precision`` sets the inference hint."""
    ov = import_openvino()
    # Unpinned: pinned threads collapse beside another busy process, as spinning ones do
    # (0.42 against 0.65 of the alone speed, docs/benchmarks.md "Threads"); the decoding
    # processes of the live path and of re-scoring are such processes.
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
                                 "ENABLE_CPU_PINNING": False}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(graph, "CPU", config)

    with_cams = len(compiled.outputs) >= OUTPUTS

    def run(batch: torch.Tensor
            ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
        result = compiled(np.ascontiguousarray(batch.float().numpy()))
        probs = torch.from_numpy(np.asarray(result[0], dtype=np.float32))
        features = torch.from_numpy(np.asarray(result[1], dtype=np.float32))
        cams = (list(torch.from_numpy(np.asarray(result[2], dtype=np.float32)).unbind(0))
                if with_cams else None)
        return probs, list(features.unbind(0)), cams

    return run


def fp32_graph_cached(cache_dir: Path, model_version: str, size: int,
                      convert: Callable[[], Any]) -> Any:
    """The fp32 graph of one model version and input size from ``cache_dir``; ``convert()``
    (then cached) when there is none yet, or one from before the CAM output."""
    cached = graph_path(cache_dir, model_version, size, "f32")
    graph = import_openvino().Core().read_model(str(cached)) if cached.is_file() else None
    if graph is None or len(graph.outputs) < OUTPUTS:
        graph = convert()
        save_graph(graph, cached)
    return graph


def compile_ensemble(models: Sequence[nn.Module], *, positive: int, size: int, precision: str,
                     cache_dir: Path, model_version: str, threads: int = 0) -> Runner:
    """Convert (or read from the cache) the fp32 graph and compile it for ``precision``
    (``fp32`` or ``bf16``; int8 graphs come from :func:`worker.score.int8.compile_int8`)."""
    started = time.monotonic()
    graph = fp32_graph_cached(cache_dir, model_version, size,
                              lambda: convert_ensemble(models, positive=positive, size=size))
    run = compile_graph(graph, precision=precision, threads=threads)
    logger.info("ensemble %s: OpenVINO graph (%s) ready in %.1f s", model_version, precision,
                time.monotonic() - started)
    return run
