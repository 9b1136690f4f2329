"""Images per second of the worker's ensemble against a naive loop, on random weights.

Run: ``.venv/bin/python bench/ensemble.py [--folds 10] [--size 224] [--threads N]``.
Variants, all 10 ResNet-50 at 224 px:

* naive: 10 torchvision ResNet-50, fp32, one model after another, batch 1;
* worker: ``worker.score.ensemble.Ensemble`` (loaded from a real manifest, channels_last, fp32),
  batch 1 and batch ``TRIAGE_SCORE_BATCH`` (8);
* bf16: the same models with weights cast to bf16 and channels_last, batch 8;
* gate: the image gate's cost, as the ratio of scoring with gate statistics to scoring without
  (same ensemble, same batch; rounds interleaved so shared-machine load hits both alike), for
  fp32 and bf16 (features from the scoring pass) and, with ``--openvino``, OpenVINO (features
  from an extra fp32 pass: OpenVINO's graph yields probabilities only).

Random weights say nothing about bf16 agreement; judge that on trained weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.worker.conftest import build_ensemble
from training.ood import LAYER_DIMS, Gate, fit_fold_stats
from worker.score.ensemble import Ensemble
from worker.settings import InferenceSettings


def write_random_ensemble(directory: Path, folds: int, size: int) -> None:
    """A real ensemble directory with random-weight folds (the tests' builder)."""
    build_ensemble(directory, folds=folds, input_size=size, threshold=0.5,
                   label="benchmark (random weights)")


def images_per_second(run: Callable[[torch.Tensor], object], batch: int, size: int,
                      images: int) -> float:
    """Warm up once, then time ``images`` images in batches of ``batch``."""
    x = torch.randn(batch, 3, size, size)
    run(x)
    rounds = max(1, images // batch)
    started = time.perf_counter()
    for _ in range(rounds):
        run(x)
    return rounds * batch / (time.perf_counter() - started)


def cpu_model() -> str:
    """The CPU model name and the flags that matter for inference speed."""
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path(
        "/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
              if f in flags]
    return f"{name} ({', '.join(wanted) or 'no AVX-512'}), {len(os.sched_getaffinity(0))} cores"


def random_gate(folds: int, seed: int = 0) -> Gate:
    """Gate statistics of the real shape (4 stages, 64 components) fitted on random features."""
    rng = np.random.default_rng(seed)
    return Gate(tuple(fit_fold_stats(rng.normal(size=(200, sum(LAYER_DIMS))))
                      for _ in range(folds)), 1e9)


def gate_ratio(ensemble: Ensemble, gate: Gate, batch: int, size: int, rounds: int) -> float:
    """Median over interleaved rounds of (time with the gate) / (time without it)."""
    with_gate, without = ensemble.gate or gate, None
    x = torch.randn(batch, 3, size, size)
    ratios = []
    for _ in range(rounds + 1):
        ensemble.gate = without
        started = time.perf_counter()
        ensemble.predict(x)
        plain = time.perf_counter() - started
        ensemble.gate = with_gate
        started = time.perf_counter()
        assert ensemble.predict(x).gate_scores
        ratios.append((time.perf_counter() - started) / plain)
    return statistics.median(ratios[1:])  # the first round warms up


def naive(folds: int) -> Callable[[torch.Tensor], object]:
    models = [resnet50(weights=None).eval() for _ in range(folds)]

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return [torch.softmax(m(x), dim=1) for m in models]
    return run


def agreement(model_dir: Path, count: int, backend: str) -> None:
    """fp32 torch against bf16 ``backend`` on real images with trained weights."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    images = sorted((shared / "cxr").glob("*/*.png"))
    images = images[:: max(1, len(images) // count)][:count]
    images += sorted((shared / "dicom").glob("*.dcm"))
    exact = Ensemble.load(model_dir, InferenceSettings(device="cpu"))
    fast = Ensemble.load(model_dir, InferenceSettings(
        device="cpu", precision="bf16", backend=backend, exact_margin=0.0,
        openvino_cache_dir=Path(tempfile.mkdtemp(prefix="cxr-ov-"))))
    tensors = torch.stack([exact.preprocess(path) for path in images])
    p32: list[float] = []
    p16: list[float] = []
    for start in range(0, len(images), 8):
        batch = tensors[start:start + 8]
        p32 += exact.predict(batch).mean
        p16 += fast.predict(batch).mean
    delta = [abs(a - b) for a, b in zip(p32, p16, strict=True)]
    threshold = exact.threshold
    same = sum((a >= threshold) == (b >= threshold) for a, b in zip(p32, p16, strict=True))
    margin = 0.02  # the worker's default TRIAGE_EXACT_MARGIN: these are rescored in fp32
    checked = [a if abs(b - threshold) < margin else b for a, b in zip(p32, p16, strict=True)]
    rescored = sum(abs(b - threshold) < margin for b in p16)
    same_checked = sum((a >= threshold) == (b >= threshold)
                       for a, b in zip(p32, checked, strict=True))
    print(f"\n{backend} bf16 vs torch fp32 on {len(images)} real images ({model_dir}, "
          f"threshold {threshold:.4f}): max |Δp| {max(delta):.4f}, "
          f"mean |Δp| {sum(delta) / len(delta):.4f}, decisions equal {same}/{len(images)}; "
          f"with the fp32 re-check within {margin} of the threshold ({rescored} rescored): "
          f"{same_checked}/{len(images)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images timed per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--model", type=Path,
                        help="trained ensemble: also compare bf16 with fp32 on real images")
    parser.add_argument("--agreement-images", type=int, default=96)
    parser.add_argument("--gate-rounds", type=int, default=5)
    parser.add_argument("--gate-only", action="store_true",
                        help="time only the image gate's cost ratios")
    parser.add_argument("--openvino", action="store_true",
                        help="also time the OpenVINO backend (fp32 and bf16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_random_ensemble(Path(tmp), args.folds, args.size)
        started = time.perf_counter()
        ensemble = Ensemble.load(Path(tmp), InferenceSettings(device="cpu",
                                                              torch_threads=args.threads))
        load_s = time.perf_counter() - started
        fast = Ensemble.load(Path(tmp), InferenceSettings(device="cpu", precision="bf16"))
        variants = {}
        if args.openvino:
            for precision in ("fp32", "bf16"):
                variants[f"worker Ensemble OpenVINO {precision}, batch {args.batch}"] = (
                    Ensemble.load(Path(tmp), InferenceSettings(
                        device="cpu", precision=precision, backend="openvino",
                        openvino_cache_dir=Path(tmp) / "ov", torch_threads=args.threads)))
    print(f"CPU: {cpu_model()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.folds} folds, "
          f"{args.size} px; ensemble load incl. sha256 checks: {load_s:.1f} s")
    small = max(args.batch // 2, 4)
    results = {} if args.gate_only else {
        "naive fp32 loop, batch 1": images_per_second(naive(args.folds), 1, args.size, small),
        "worker Ensemble fp32 channels_last, batch 1": images_per_second(
            ensemble.predict, 1, args.size, small),
        f"worker Ensemble fp32 channels_last, batch {args.batch}": images_per_second(
            ensemble.predict, args.batch, args.size, args.images),
        f"worker Ensemble bf16 channels_last, batch {args.batch}": images_per_second(
            fast.predict, args.batch, args.size, args.images),
    }
    for name, compiled in variants.items() if results else ():
        results[name] = images_per_second(compiled.predict, args.batch, args.size, args.images)
    baseline = results.get("naive fp32 loop, batch 1", 1.0)
    print(f"{'variant':50s} {'img/s':>7s} {'vs naive':>9s}" if results else "")
    for name, rate in results.items():
        print(f"{name:50s} {rate:7.2f} {rate / baseline:8.2f}x")
    gate = random_gate(args.folds)
    gated = {"torch fp32": ensemble, "torch bf16": fast,
             **{name.split(", batch")[0].removeprefix("worker Ensemble "): model
                for name, model in variants.items()}}
    print(f"\nimage gate cost (median of {args.gate_rounds} interleaved rounds, batch "
          f"{args.batch}): time with the gate / time without")
    for name, model in gated.items():
        ratio = gate_ratio(model, gate, args.batch, args.size, args.gate_rounds)
        print(f"  {name:20s} {ratio:.3f}")
    if args.model is not None:
        for backend in ("torch", "openvino") if args.openvino else ("torch",):
            agreement(args.model, args.agreement_images, backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
