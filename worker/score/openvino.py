"""Optional OpenVINO backend: the whole fold ensemble compiled as one graph.

PERF-NOTES measured one OpenVINO graph of the 10-model ensemble at 2.7 img/s in fp32 and 5.1 in
bf16 on this kind of CPU, against 4.0 for torch with bf16 weights. The torch path stays the
reference; this backend is chosen with ``TRIAGE_INFERENCE_BACKEND=openvino``. The converted
model is cached per model version, so only the first start pays for the conversion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import TriageError

logger = logging.getLogger(__name__)
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}

Runner = Callable[[torch.Tensor], torch.Tensor]


class _Stacked(nn.Module):
    """All folds in one module: (B, 3, H, W) -> (folds, B) positive-class probabilities."""

    def __init__(self, models: Sequence[nn.Module], positive: int) -> None:
        super().__init__()
        self.folds = nn.ModuleList(models)
        self.positive = positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.softmax(model(x).float(), dim=1)[:, self.positive] for model in self.folds])


def compile_ensemble(models: Sequence[nn.Module], *, positive: int, size: int, precision: str,
                     cache_dir: Path, model_version: str, threads: int = 0) -> Runner:
    """Convert (or load from the cache) and compile the ensemble graph for the CPU."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise TriageError("TRIAGE_INFERENCE_BACKEND=openvino needs the openvino package: "
                          "pip install 'cxr-triage[openvino]'") from exc
    started = time.monotonic()
    core = ov.Core()
    cached = cache_dir / f"{model_version}-{size}.xml"
    if cached.is_file():
        graph = core.read_model(str(cached))
    else:
        stacked = _Stacked([m.to(torch.float32) for m in models], positive).eval()
        graph = ov.convert_model(stacked, example_input=torch.zeros(1, 3, size, size),
                                 input=[(-1, 3, size, size)])
        cache_dir.mkdir(parents=True, exist_ok=True)
        ov.save_model(graph, str(cached))
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision]}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(graph, "CPU", config)
    logger.info("ensemble %s: OpenVINO graph (%s) ready in %.1f s", model_version, precision,
                time.monotonic() - started)

    def run(batch: torch.Tensor) -> torch.Tensor:
        result = compiled(np.ascontiguousarray(batch.float().numpy()))[0]
        return torch.from_numpy(np.asarray(result, dtype=np.float32))

    return run
