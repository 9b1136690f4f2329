"""Images per second of the worker's ensemble per precision and backend, and agreement with fp32.

Two modes, both printing the machine (CPU model, flags, load) with every figure:

* random weights (no ``--model``): speed only, synthetic input. naive loop (10 torchvision
  ResNet-50 in fp32 one after another, batch 1); ``worker.score.ensemble.Ensemble`` in torch
  fp32 (batch 1 and 8), torch bf16 (native bf16 only), and with ``--openvino`` OpenVINO fp32 and
  bf16; then the image gate's cost as the ratio of scoring with gate statistics to scoring
  without (interleaved rounds, so shared-machine load hits both alike).
* trained (``--model DIR``): every variant (torch fp32 batch 8 = the reference; torch bf16
  where native; OpenVINO fp32, bf16 where native, int8; ``auto``) scores the same real images
  (the shared development PNGs and DICOM files, at least 300), timed as one pass each. For each
  fast path: max and mean |dp| against fp32, decisions equal before and after the fp32 re-check
  of images within ``TRIAGE_EXACT_MARGIN`` of the threshold, the share re-scored, and the gate's
  decisions. ``auto`` runs as the worker does (re-check included), so its rate is the effective
  one. The int8 graph is built first when missing (``--calibration``, NNCF). Then the gate's
  cost on OpenVINO (features from the graph's second output).

Run: ``.venv/bin/python bench/ensemble.py --model DIR --threads 2`` (trained), or
``.venv/bin/python bench/ensemble.py --folds 10 --size 224 --openvino`` (random weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from common.hardware import detect
from tests.worker.conftest import build_ensemble
from training.ood import LAYER_DIMS, FoldStats, Gate, fit_fold_stats
from training.outlier import fit_outlier_head
from worker.score.ensemble import BatchPrediction, Ensemble
from worker.score.int8 import quantize_ensemble
from worker.settings import InferenceSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


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


def random_gate(folds: int, seed: int = 0) -> Gate:
    """Gate statistics of the real shape (4 stages, 64 components, an outlier head) fitted on
    random features."""
    rng = np.random.default_rng(seed)

    def fold() -> FoldStats:
        inside, outside = (rng.normal(size=(200, sum(LAYER_DIMS))) for _ in range(2))
        return dataclasses.replace(fit_fold_stats(inside),
                                   outlier=fit_outlier_head(inside, outside + 0.5))

    return Gate(tuple(fold() for _ in range(folds)), 1e9, outlier_threshold=1e9)


def gate_ratio(ensemble: Ensemble, gate: Gate, batch: torch.Tensor, rounds: int) -> float:
    """Median over interleaved rounds of (time with the gate) / (time without it)."""
    with_gate, without = ensemble.gate or gate, None
    ratios = []
    for _ in range(rounds + 1):
        ensemble.gate = without
        started = time.perf_counter()
        ensemble.predict(batch)
        plain = time.perf_counter() - started
        ensemble.gate = with_gate
        started = time.perf_counter()
        assert ensemble.predict(batch).gate_scores
        ratios.append((time.perf_counter() - started) / plain)
    ensemble.gate = with_gate
    return statistics.median(ratios[1:])  # the first round warms up


def naive(folds: int) -> Callable[[torch.Tensor], object]:
    models = [resnet50(weights=None).eval() for _ in range(folds)]

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return [torch.softmax(m(x), dim=1) for m in models]
    return run


def load(model_dir: Path, precision: str, backend: str, threads: int, cache: Path,
         margin: float = 0.0, gate_margin: float = 0.0) -> Ensemble:
    """The worker's ensemble; margins 0 (the default): the fast path alone, no re-check (not
    even within the margins an int8 graph measured at its build)."""
    model = Ensemble.load(model_dir, InferenceSettings(
        device="cpu", precision=precision, backend=backend, torch_threads=threads,
        openvino_cache_dir=cache, exact_margin=margin, gate_margin=gate_margin))
    if margin == gate_margin == 0.0:
        model.exact_margin = model.gate_margin = 0.0
    return model


def random_weights(args: argparse.Namespace) -> None:
    """Speed of each variant on random weights and synthetic input."""
    native = detect().native_bf16
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, cache = Path(tmp) / "model", Path(tmp) / "ov"
        write_random_ensemble(model_dir, args.folds, args.size)
        variants = {"torch fp32": load(model_dir, "fp32", "torch", args.threads, cache)}
        if native:
            variants["torch bf16"] = load(model_dir, "bf16", "torch", args.threads, cache)
        for precision in ("fp32", "bf16") if args.openvino else ():
            if precision == "fp32" or native:
                variants[f"OpenVINO {precision}"] = load(model_dir, precision, "openvino",
                                                         args.threads, cache)
    print(describe_machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.folds} folds, "
          f"{args.size} px, random weights")
    results = {} if args.gate_only else {
        "naive fp32 loop, batch 1": images_per_second(naive(args.folds), 1, args.size, 4),
        "torch fp32 channels_last, batch 1": images_per_second(
            variants["torch fp32"].predict, 1, args.size, 4),
        **{f"{name}, batch {args.batch}": images_per_second(
            model.predict, args.batch, args.size, args.images)
           for name, model in variants.items()},
    }
    baseline = results.get("naive fp32 loop, batch 1", 1.0)
    for name, rate in results.items():
        print(f"  {name:45s} {rate:7.2f} img/s {rate / baseline:6.2f}x naive")
    gate = random_gate(args.folds)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"{describe_machine()}\nimage gate cost (median of {args.gate_rounds} interleaved "
          f"rounds, batch {args.batch}): time with the gate / time without")
    for name, model in variants.items():
        print(f"  {name:20s} {gate_ratio(model, gate, x, args.gate_rounds):.3f}")


def real_images(count: int) -> list[Path]:
    """``count`` development PNGs (evenly spread over both classes) and every shared DICOM."""
    pngs = sorted((SHARED / "cxr").glob("*/*.png"))
    pngs = pngs[:: max(1, len(pngs) // count)][:count]
    return pngs + sorted((SHARED / "dicom").glob("*.dcm"))


@dataclass
class Pass:
    """One variant's pass over the images: probabilities, gate refusals, seconds."""

    name: str
    means: np.ndarray
    refused: np.ndarray
    seconds: float
    rescored: int = 0
    gate_scores: np.ndarray | None = None


def score_all(model: Ensemble, tensors: torch.Tensor, batch: int) -> Pass:
    """Score every image in batches (one warm-up batch first), timed."""
    model.predict(tensors[:batch])
    rescored_before = model.rescored
    means: list[float] = []
    refused: list[bool] = []
    gate_scores: list[float] = []
    started = time.perf_counter()
    for start in range(0, len(tensors), batch):
        result: BatchPrediction = model.predict(tensors[start:start + batch])
        means += result.mean
        refused += result.not_assessable or [False] * len(result.mean)
        gate_scores += result.gate_scores
    seconds = time.perf_counter() - started
    return Pass(f"{model.backend} {model.precision}", np.array(means), np.array(refused),
                seconds, model.rescored - rescored_before,
                np.array(gate_scores) if gate_scores else None)


def agreement_line(fast: Pass, exact: Pass, threshold: float, margin: float,
                   gate: tuple[float, float] | None = None) -> str:
    """|dp| and decisions against fp32, before and after the re-check within ``margin``;
    with ``gate`` (its threshold and ``TRIAGE_GATE_EXACT_MARGIN``), the gate's too."""
    delta = np.abs(fast.means - exact.means)
    near = np.abs(fast.means - threshold) < margin
    gate_same = int((fast.refused == exact.refused).sum())
    gate_text = f"gate decisions equal {gate_same}/{len(exact.means)}"
    if gate is not None and fast.gate_scores is not None and exact.gate_scores is not None:
        gate_threshold, gate_margin = gate
        error = np.abs(fast.gate_scores - exact.gate_scores) / gate_threshold
        near_gate = np.abs(fast.gate_scores - gate_threshold) < gate_margin * gate_threshold
        checked_refusals = np.where(near_gate, exact.refused, fast.refused)
        gate_text = (f"gate |dscore|/threshold max {error.max():.4f} mean {error.mean():.4f}; "
                     f"gate decisions equal {gate_same}/{len(error)} raw, "
                     f"{int((checked_refusals == exact.refused).sum())}/{len(error)} after the "
                     f"re-check ({int((near_gate & ~near).sum())} more re-scored)")
        near = near | near_gate
    checked = np.where(near, exact.means, fast.means)
    same_raw = int(((fast.means >= threshold) == (exact.means >= threshold)).sum())
    same = int(((checked >= threshold) == (exact.means >= threshold)).sum())
    n = len(exact.means)
    return (f"max |dp| {delta.max():.4f}, mean |dp| {delta.mean():.4f}; decisions equal "
            f"{same_raw}/{n} raw, {same}/{n} after the fp32 re-check ({near.sum()} re-scored, "
            f"{100 * near.mean():.1f} %); {gate_text}")


def trained(args: argparse.Namespace) -> None:
    """Speed and agreement of every path on the trained ensemble and real images."""
    caps = detect()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="cxr-ov-"))
    started = time.perf_counter()
    graph = quantize_ensemble(args.model, args.calibration, cache, images=args.calibration_images)
    print(f"{describe_machine()}\nint8 graph: {graph.reason} ({time.perf_counter() - started:.0f}"
          f" s incl. any build; calibration {args.calibration}, {args.calibration_images} images)")
    reference = load(args.model, "fp32", "torch", args.threads, cache)
    files = real_images(args.agreement_images)
    tensors = torch.stack([reference.preprocess(path) for path in files])
    threshold, margin = reference.threshold, args.margin
    variants = [("fp32", "torch")] + ([("bf16", "torch")] if caps.native_bf16 else [])
    variants += [("fp32", "openvino")] + ([("bf16", "openvino")] if caps.native_bf16 else [])
    variants += [("int8", "openvino")]
    if args.auto_only:  # the reference and auto (after any timing at load) only
        variants = variants[:1]
    exact = score_all(reference, tensors, args.batch)
    passes = [exact] + [score_all(load(args.model, p, b, args.threads, cache), tensors,
                                  args.batch) for p, b in variants[1:]]
    gate_margin = args.gate_margin
    int8_checked = load(args.model, "int8", "openvino", args.threads, cache, margin, gate_margin)
    int8_pass = score_all(int8_checked, tensors, args.batch)
    auto = load(args.model, "auto", "auto", args.threads, cache, margin, gate_margin)
    auto_pass = score_all(auto, tensors, args.batch)
    print(f"\n{describe_machine()}\n{args.model} ({len(reference.models)} folds, "
          f"{reference.manifest.input_size} px, threshold {threshold:.4f}); {len(files)} real "
          f"images; batch {args.batch}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; re-check margins {margin} (probability), {gate_margin} of the gate "
          f"threshold")
    base = len(files) / exact.seconds
    for one in passes:
        rate = len(files) / one.seconds
        own = (int8_checked.exact_margin, int8_checked.gate_margin) if one.name.endswith(
            "int8") else (margin, gate_margin)
        gate_check = None if reference.gate is None else (reference.gate.threshold, own[1])
        line = "" if one is exact else "; " + agreement_line(one, exact, threshold, own[0],
                                                             gate_check)
        print(f"  {one.name:16s} {rate:6.2f} img/s {rate / base:5.2f}x torch fp32{line}")
    if graph.error is not None:
        print(f"  int8 error measured at build on {graph.error.images} check images: max |dp| "
              f"{graph.error.max_dp:.4f}, gate {graph.error.gate_deviation}; the int8 path "
              f"re-checks within {int8_checked.exact_margin:.4f} (probability) and "
              f"{int8_checked.gate_margin:.3f} of the gate threshold")
    for name, model, one in (("int8 + re-check", int8_checked, int8_pass),
                             ("auto", auto, auto_pass)):
        rate = len(files) / one.seconds
        same = int(((one.means >= threshold) == (exact.means >= threshold)).sum())
        print(f"  {name} = {model.choice.describe()}\n  {name:16s} {rate:6.2f} img/s "
              f"{rate / base:5.2f}x torch fp32 (re-check included: {one.rescored} "
              f"images re-scored in fp32); decisions equal "
              f"{same}/{len(files)}, gate decisions equal "
              f"{int((one.refused == exact.refused).sum())}/{len(files)}, max |dp| "
              f"{np.abs(one.means - exact.means).max():.4f}")
    gate = reference.gate or random_gate(len(reference.models))
    print(f"\n{describe_machine()}\nimage gate cost on {args.model} (median of "
          f"{args.gate_rounds} interleaved rounds, batch {args.batch}): with / without")
    batch = tensors[:args.batch]
    for precision, backend in variants:
        model = load(args.model, precision, backend, args.threads, cache)
        print(f"  {backend} {precision:5s} {gate_ratio(model, gate, batch, args.gate_rounds):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images timed per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--model", type=Path, help="trained ensemble: speed and agreement of "
                        "every path on real images")
    parser.add_argument("--agreement-images", type=int, default=336,
                        help="development PNGs (plus the shared DICOM files)")
    parser.add_argument("--calibration", type=Path, default=SHARED / "cxr",
                        help="training images for the int8 graph (built when missing)")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--cache", type=Path, help="OpenVINO graph cache (default: temporary)")
    parser.add_argument("--margin", type=float, default=InferenceSettings().exact_margin)
    parser.add_argument("--gate-margin", type=float, default=InferenceSettings().gate_margin)
    parser.add_argument("--gate-rounds", type=int, default=5)
    parser.add_argument("--auto-only", action="store_true",
                        help="with --model: time only the fp32 reference, int8 and auto")
    parser.add_argument("--gate-only", action="store_true",
                        help="random weights: time only the image gate's cost ratios")
    parser.add_argument("--openvino", action="store_true",
                        help="random weights: also time the OpenVINO backend")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model is not None:
        trained(args)
    else:
        random_weights(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
