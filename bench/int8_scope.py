"""int8 graphs with some ResNet stages kept in floating point: error against fp32, and speed.

For a trained ensemble (``--model``), one run builds the fp32 OpenVINO graph and, per variant
(``--variants``, each a ``+``-joined list of stages kept, or ``none``, with ``@minmax`` for
activation ranges over all calibration images instead of NNCF's mean of per-image ranges), an
int8 graph quantized by NNCF on the same calibration images
(``worker.score.int8.quantize_graph``, as
``cxr-triage model quantize --keep`` does). Every graph scores the same check images, held out
from calibration, at batch 8. Per variant it prints: images/s and its ratio to OpenVINO fp32
measured in the same run, max and mean |dp| of the ensemble probability against fp32, the
largest gate-score error as a share of the gate threshold, and the share of check images the
build's margins (twice those errors) would re-score in fp32. With ``--bf16-rest`` on a CPU
with native bf16, each variant is also compiled with the kept parts in bf16.

Run: ``.venv/bin/python bench/int8_scope.py --model var/runs/dev224 --threads 2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from common.hardware import detect
from training.manifest import load_manifest
from training.ood import load_gate
from worker.score.int8 import (
    INT8,
    calibration_split,
    error_summary,
    fp32_graph,
    model_tensors,
    quantize_graph,
    score_graph,
)
from worker.score.openvino import compile_graph

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(run: Any, tensors: list[Any], gate: Any) -> tuple[tuple[Any, Any], float]:
    """Scores of ``tensors`` and images/s, after one warm-up batch."""
    score_graph(run, tensors[:8], gate)
    started = time.perf_counter()
    scores = score_graph(run, tensors, gate)
    return scores, len(tensors) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=SHARED / "cxr")
    parser.add_argument("--calibration-images", type=int, default=168)
    parser.add_argument("--check-images", type=int, default=168)
    parser.add_argument("--variants", default="none,stem,stem+layer1,layer4,stem+layer1+layer4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16-rest", action="store_true")
    args = parser.parse_args()
    print(describe_machine())
    manifest = load_manifest(args.model, verify_hashes=True)
    gate = load_gate(args.model, manifest.ood_gate, verify_hashes=False)
    samples, held_out = calibration_split(args.data, args.calibration_images, args.check_images)
    calibration = model_tensors(manifest, [s.path for s in samples])
    check = model_tensors(manifest, [s.path for s in held_out])
    print(f"model {manifest.model_version} ({len(manifest.folds)} folds, "
          f"{manifest.input_size} px); {len(calibration)} calibration and {len(check)} check "
          f"images from {args.data}; batch 8, {args.threads} threads")
    graph = fp32_graph(args.model, manifest, None)
    exact, fp32_rate = timed(compile_graph(graph, precision="fp32", threads=args.threads),
                             check, gate)
    print(f"{'variant':<28} {'img/s':>6} {'x fp32':>6} {'max|dp|':>8} {'mean|dp|':>8} "
          f"{'gate dev':>8} {'re-score':>8} {'build s':>7}")
    print(f"{'OpenVINO fp32':<28} {fp32_rate:6.2f} {1.0:6.2f}")
    bf16_rest = args.bf16_rest and detect(light=True).native_bf16
    for variant in args.variants.split(","):
        stages, _, ranges = variant.partition("@")
        keep = () if stages == "none" else tuple(stages.split("+"))
        started = time.monotonic()
        quantized = quantize_graph(graph, calibration, keep, ranges or "mean")
        build_s = time.monotonic() - started
        for rest in ("fp32", "bf16") if bf16_rest else ("fp32",):
            precision = INT8 if rest == "fp32" else "bf16"
            rough, rate = timed(compile_graph(quantized, precision=precision,
                                              threads=args.threads), check, gate)
            error = error_summary(rough, exact, threshold=manifest.threshold, gate=gate)
            name = f"int8, kept {variant}" + (" (bf16)" if rest == "bf16" else "")
            gate_dev = error["gate_deviation"]
            print(f"{name:<28} {rate:6.2f} {rate / fp32_rate:6.2f} {error['max_dp']:8.4f} "
                  f"{error['mean_dp']:8.4f} "
                  f"{'n/a' if gate_dev is None else f'{gate_dev:.1%}':>8} "
                  f"{error['rescore_share']:8.1%} {build_s:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
