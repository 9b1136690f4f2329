"""Decode benchmark: ms per image for each transfer syntax, full decode against the reduced path.

Columns: pydicom's default decoder alone; our pipeline decoding every pixel ("full": JPEG-LS
through pyjpegls, resize before windowing); and our pipeline as the worker runs it ("reduced":
JPEG 2000 decoded at the lowest resolution level that still covers the model input).
With ``--model DIR`` it also scores J2K-encoded copies of the development images both ways
and reports the largest probability difference and decision agreement.

    .venv/bin/python bench/decode.py [--size 2500x2000] [--repeats 5] [--model DIR --images 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from cxr_triage.synthetic import cr_dataset, radiograph
from training.preprocessing import dicom_unit_image, to_model_tensor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def encodings(rows: int, columns: int, workdir: Path) -> dict[str, Path]:
    """One synthetic 12-bit CR written in each transfer syntax."""
    side = max(rows, columns)
    pixels = (radiograph(np.random.default_rng(0), covid=True, size=side) * 4095)
    pixels = pixels[:rows, :columns].astype(np.uint16)
    out: dict[str, Path] = {}
    variants: list[tuple[str, str | None, dict[str, object]]] = [
        ("explicit VR LE (uncompressed)", None, {}),
        ("RLE lossless", RLELossless, {}),
        ("JPEG-LS lossless", JPEGLSLossless, {}),
        ("JPEG 2000 lossless", JPEG2000Lossless, {}),
        ("JPEG 2000 lossy (20:1)", JPEG2000, {"j2k_cr": [20]}),
    ]
    for name, syntax, options in variants:
        ds = cr_dataset(pixels, study_uid=generate_uid(), series_uid=generate_uid(),
                        accession="BENCH")
        if syntax is not None:
            ds.compress(syntax, **options)  # type: ignore[arg-type]
        path = workdir / f"{len(out)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[name] = path
    native = out["explicit VR LE (uncompressed)"]
    lossless_jpeg = workdir / "jpeg-lossless.dcm"
    done = subprocess.run(["dcmcjpeg", "+e1", str(native), str(lossless_jpeg)],
                          capture_output=True, check=False)
    if done.returncode == 0:
        out["JPEG lossless SV1 (dcmcjpeg)"] = lossless_jpeg
    return out


def default_decode(path: Path, size: int) -> np.ndarray:
    """pydicom's default decoder alone (no windowing, no resize)."""
    return np.asarray(dcmread(path).pixel_array)


def full_path(path: Path, size: int) -> np.ndarray:
    """Our pipeline decoding every pixel."""
    return dicom_unit_image(dcmread(path), size=size, reduced_decode=False)


def our_path(path: Path, size: int) -> np.ndarray:
    return dicom_unit_image(dcmread(path), size=size)


def timed(function: Callable[[Path, int], np.ndarray], path: Path, size: int,
          repeats: int) -> tuple[float, np.ndarray]:
    times, result = [], np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(path, size)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def decode_table(files: dict[str, Path], size: int, repeats: int) -> None:
    print(f"{'transfer syntax':32} {'pydicom':>9} {'full':>9} {'reduced':>9} {'full/red':>9} "
          f"{'max|Δpx|':>9}")
    print(f"{'':32} {'decode ms':>9} {'ms':>9} {'ms':>9}")
    for name, path in files.items():
        decode_ms, _ = timed(default_decode, path, size, repeats)
        full_ms, full = timed(full_path, path, size, repeats)
        ours_ms, ours = timed(our_path, path, size, repeats)
        print(f"{name:32} {decode_ms:9.1f} {full_ms:9.1f} {ours_ms:9.1f} {full_ms / ours_ms:8.1f}x "
              f"{float(np.abs(full - ours).max()):9.4f}")


def j2k_copies(images: list[Path], workdir: Path) -> list[Path]:
    """Development PNGs re-encoded as JPEG 2000 lossless DICOM (8-bit, as the PNGs are)."""
    paths = []
    for index, png in enumerate(images):
        grey = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
        ds: Dataset = cr_dataset(grey, study_uid=generate_uid(), series_uid=generate_uid(),
                                 accession="BENCH")
        ds.BitsStored, ds.HighBit = 8, 7
        ds.compress(JPEG2000Lossless)
        path = workdir / f"j2k-{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def probability_table(model_dir: Path, count: int, workdir: Path) -> None:
    import torch

    from worker.score.ensemble import Ensemble
    from worker.settings import InferenceSettings

    ensemble = Ensemble.load(model_dir, InferenceSettings(device="cpu", precision="fp32",
                                                          backend="torch"))
    config = ensemble.config
    size = config.size
    pngs = sorted((SHARED / "cxr").glob("*/*.png"))[::max(1, 336 // count)][:count]
    paths = j2k_copies(pngs, workdir)

    def tensor(unit: np.ndarray) -> torch.Tensor:
        return to_model_tensor(unit, size=size, mean=tuple(config.mean), std=tuple(config.std))

    full = torch.stack([tensor(full_path(p, size)) for p in paths])
    ours = torch.stack([tensor(our_path(p, size)) for p in paths])
    a, b = ensemble.predict(full), ensemble.predict(ours)
    delta = np.abs(np.asarray(a.mean) - np.asarray(b.mean))
    threshold = ensemble.threshold
    same = sum((x >= threshold) == (y >= threshold) for x, y in zip(a.mean, b.mean, strict=True))
    print(f"\n{len(paths)} development images as JPEG 2000 lossless, ensemble {model_dir} "
          f"({size} px): max |Δp| {delta.max():.4f}, mean |Δp| {delta.mean():.4f}, "
          f"decisions equal {same}/{len(paths)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2500x2000", help="rows x columns of the test image")
    parser.add_argument("--input", type=int, default=224, help="model input size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, help="ensemble for the probability comparison")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    rows, columns = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="cxr-bench-decode-") as tmp:
        workdir = Path(tmp)
        print(describe_machine(torch_facts=False))
        print(f"one {rows} x {columns} 12-bit CR, median of {args.repeats}, model input "
              f"{args.input} px")
        decode_table(encodings(rows, columns, workdir), args.input, args.repeats)
        if args.model is not None:
            probability_table(args.model, args.images, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
