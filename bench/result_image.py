"""What the result image adds to a study, against scoring the study, side by side on the CPU.

Run: ``.venv/bin/python bench/result_image.py [--folds 10] [--size 224] [--threads 2]
[--rounds 3] [--docs-png docs/img/result-image.png]`` (``--docs-png``: also write the synthetic
study's result image as a PNG, the rendering in docs/sr.md; ``--rounds 0``: only that).

Per image (the study's deciding image), in interleaved rounds (shared-machine load hits both
alike), medians:

* scoring: ``Ensemble.preprocess`` (the worker's decode) and ``Ensemble.predict`` on a batch of
  one (every fold's forward pass, which also yields the Grad-CAM the score records:
  ``worker.score.cam``);
* result image: the full-resolution decode (``load_unit_image``), rendering the recorded
  Grad-CAM over it (overlay, burned-in text) and encoding plus writing the Secondary Capture
  (highdicom, Part 10 with fsync), as ``make_result_image`` does with ``score.cam``;
* for reference, not part of the image's cost: ``grad-cam rerun``, the library's Grad-CAM run
  again over all folds (``worker.report.heatmap``), the path a score recorded before the
  scoring pass kept its CAM still takes.

Two precisions: fp32 (the reference path) and, on CPUs with native bf16, bf16 (scoring with the
bf16 weights, the heatmap under bf16 autocast, as the worker does when it scores in bf16).
Images: the chest radiographs of ``../shared/data/dicom`` (JPEG 2000, JPEG-LS, JPEG) and a
synthetic 512 px study. The folds are ResNet-50s of the trained shape (2 classes, 224 px input,
7 x 7 ``layer4`` map) with **random weights**: no trained model is available here; speed does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_kind, describe_machine
from common.hardware import detect
from cxr_triage.synthetic import dicom_study
from tests.worker.conftest import build_ensemble
from training.preprocessing import load_unit_image, to_model_tensor
from worker.report.heatmap import study_heatmap
from worker.report.identity import model_identity
from worker.report.result_image import (
    ImageFinding,
    Placement,
    build_result_image,
    make_result_image,
    render,
    write_result_image,
)
from worker.score.decision import Decision, Priority
from worker.score.ensemble import Ensemble
from worker.settings import InferenceSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
IMAGES = ("pylibjpeg-data_RG1_J2KI.dcm", "pylibjpeg-data_966_fixed.dcm",
          "dicom-test-files_RG2_JLSL.dcm",
          "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
FINDING = ImageFinding(Decision.SUSPECTED, Priority.HIGH, 0.87, 0.04, 10, 0.5)
STEPS = ("decode", "predict", "image decode", "render", "encode+write", "grad-cam rerun")


def _timed(step: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = step()
    return time.perf_counter() - started, result


def one_round(ensemble: Ensemble, path: Path, out: Path) -> dict[str, float]:
    """Score the image as the worker does, then make its result image; seconds per step."""
    times: dict[str, float] = {}
    times["decode"], tensor = _timed(lambda: ensemble.preprocess(path))
    times["predict"], prediction = _timed(
        lambda: ensemble.predict(tensor[None]))  # type: ignore[index]
    cam = prediction.cam(0)  # type: ignore[attr-defined]
    assert cam is not None, "the scoring pass recorded no Grad-CAM"
    times["image decode"], unit = _timed(lambda: load_unit_image(path))
    model_input = to_model_tensor(unit, **ensemble.config.to_dict())  # type: ignore[arg-type]
    times["grad-cam rerun"], _ = _timed(lambda: study_heatmap(ensemble, model_input))
    model = model_identity(ensemble.manifest)
    times["render"], pixels = _timed(lambda: render(unit, cam, FINDING, model))  # type: ignore[arg-type]
    header = dcmread(path, stop_before_pixels=True, force=True)
    placement = Placement(generate_uid(), generate_uid(), 10901)

    def encode() -> Path:
        image = build_result_image(header, pixels, FINDING, model, placement,  # type: ignore[arg-type]
                                   manufacturer="bench")
        return write_result_image(image, out / f"{placement.sop_instance_uid}.dcm")

    times["encode+write"], _ = _timed(encode)
    return times


def images(folder: Path) -> list[tuple[str, Path]]:
    """The shared chest radiographs that exist here, and a synthetic 512 px CR."""
    found = [(name.split("_")[1][:18], SHARED / name) for name in IMAGES
             if (SHARED / name).exists()]
    synthetic = dicom_study(np.random.default_rng(0), True, "BENCH")[0]
    path = folder / "synthetic.dcm"
    synthetic.save_as(path, enforce_file_format=True)
    return [*found, ("synthetic 512", path)]


def docs_png(ensemble: Ensemble, source: Path, out: Path, png: Path) -> None:
    """The synthetic study's result image, as the worker writes it, saved as a PNG (256
    colours, to keep the repository small)."""
    header = dcmread(source, stop_before_pixels=True)
    finding = ImageFinding(Decision.SUSPECTED, Priority.HIGH, 0.873, 0.041,
                           len(ensemble.models), 0.159)
    written = make_result_image(source, header, finding, model_identity(ensemble.manifest),
                                ensemble, Placement(generate_uid(), generate_uid(), 10901), out,
                                manufacturer="cxr-triage")
    Image.fromarray(dcmread(written.path).pixel_array).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        png, optimize=True)
    print(f"wrote {png}")


def report(label: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{label}: median seconds per study (one image)")
    print(f"{'image':<20}" + "".join(f"{s:>14}" for s in STEPS)
          + f"{'scoring':>10}{'image':>10}{'ratio':>8}")
    ratios = []
    for name, t in rows.items():
        scoring = t["decode"] + t["predict"]
        extra = t["image decode"] + t["render"] + t["encode+write"]
        ratios.append(extra / scoring)
        print(f"{name:<20}" + "".join(f"{t[s]:>14.3f}" for s in STEPS)
              + f"{scoring:>10.3f}{extra:>10.3f}{extra / scoring:>8.2f}")
    print(f"result image / scoring: median {statistics.median(ratios):.2f} "
          f"(goal 0.50); a Grad-CAM rerun instead of the recorded map / predict: "
          f"{statistics.median(t['grad-cam rerun'] / t['predict'] for t in rows.values()):.2f}")


def measure(ensemble: Ensemble, paths: list[tuple[str, Path]], rounds: int,
            out: Path) -> dict[str, dict[str, float]]:
    for _, path in paths[:1]:
        one_round(ensemble, path, out)  # warm-up
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in paths}
    for _ in range(rounds):
        for name, path in paths:
            samples[name].append(one_round(ensemble, path, out))
    return {name: {s: statistics.median(r[s] for r in runs) for s in STEPS}
            for name, runs in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs-png", type=Path, help="write the synthetic study's result "
                        "image here as a PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine())
    print(f"CPU kind: {cpu_kind()}; torch {torch.__version__}, {args.threads} threads; "
          f"{args.folds} random-weight ResNet-50 folds at {args.size} px")
    precisions = ["fp32"] + (["bf16"] if detect(light=True).native_bf16 else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_ensemble(folder / "model", folds=args.folds, input_size=args.size,
                       threshold=0.5, label="benchmark (random weights)")
        paths = images(folder)
        for precision in precisions:
            ensemble = Ensemble.load(folder / "model", InferenceSettings(
                device="cpu", backend="torch", precision=precision,
                torch_threads=args.threads))
            (folder / precision).mkdir()
            if args.docs_png is not None and precision == "fp32":
                docs_png(ensemble, paths[-1][1], folder / precision, args.docs_png)
            if args.rounds < 1:
                break
            rows = measure(ensemble, paths, args.rounds, folder / precision)
            report(f"{precision} (scoring and heatmap)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
