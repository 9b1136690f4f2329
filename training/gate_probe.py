"""A probe set for the image gate: images that are not frontal chest radiographs.

``write_probe_set`` writes ``out/non-chest/`` (PNGs, plus links to real non-chest DICOM
files) and links ``out/covid`` and ``out/normal`` to chest images, a layout ``cxr-triage
evaluate`` reads (docs/results/safety-gate.md). The non-chest kinds: crops, rotations by
90 degrees and inversions of chest images, blank and noise images, and lateral-view surrogates
drawn with the shapes of :func:`cxr_triage.synthetic.radiograph` (one lung field, spine behind,
heart in front).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.preprocessing import load_unit_image

KINDS = ("crop", "rot90", "inverted", "blank", "noise", "lateral")


def probe_kind(path: Path) -> str:
    """The kind of a probe file, from its name (``lateral_0003.png`` -> ``lateral``)."""
    return path.name.split("_")[0]


def lateral(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A lateral chest view surrogate in [0, 1] (bright = dense)."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = np.exp(-(((x - 0.5) / rng.uniform(0.3, 0.36)) ** 8 + ((y - 0.55) / 0.5) ** 8))
    image = 0.75 * body
    lung = np.exp(-(((x - 0.52) / 0.2) ** 2 + ((y - 0.45) / 0.28) ** 4))
    image -= 0.4 * lung
    spine_x = rng.uniform(0.72, 0.78)
    image += 0.35 * np.exp(-(((x - spine_x) / 0.04) ** 2)) * body
    image += 0.3 * (np.sin(2 * np.pi * y * 14) > 0.6) * np.exp(-(((x - spine_x) / 0.05) ** 2))
    image += 0.3 * np.exp(-(((x - 0.38) / 0.12) ** 2 + ((y - 0.62) / 0.14) ** 2))  # heart
    image += rng.normal(0, 0.03, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _crop(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = unit.shape
    side = rng.uniform(0.3, 0.5)
    ch, cw = int(h * side), int(w * side)
    top, left = rng.integers(0, h - ch), rng.integers(0, w - cw)
    return unit[top:top + ch, left:left + cw]


def _variants(unit: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"crop": _crop(unit, rng), "rot90": np.rot90(unit, k=int(rng.choice([1, 3]))),
            "inverted": 1.0 - unit}


def _save(path: Path, unit: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8)).save(path)


def write_probe_set(out: Path, chest: Sequence[Path], *, labels: Sequence[str],
                    real_non_chest: Sequence[Path] = (), per_kind: int = 20,
                    seed: int = 0) -> dict[str, int]:
    """Write the probe layout; returns the number of non-chest images per kind."""
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(chest))[:per_kind]
    counts = dict.fromkeys((*KINDS, "real"), 0)
    target = out / "non-chest"
    for index in picked:
        for kind, image in _variants(load_unit_image(chest[index], size=256), rng).items():
            _save(target / f"{kind}_{index:04d}.png", image)
            counts[kind] += 1
    for i in range(per_kind):
        _save(target / f"blank_{i:04d}.png", np.full((256, 256), i / max(per_kind - 1, 1)))
        noise = rng.uniform(size=(256, 256)) if i % 2 else rng.normal(0.5, 0.2, (256, 256))
        _save(target / f"noise_{i:04d}.png", noise)
        _save(target / f"lateral_{i:04d}.png", lateral(rng))
        counts["blank"] += 1
        counts["noise"] += 1
        counts["lateral"] += 1
    for path in real_non_chest:
        link = target / f"real_{path.name}"
        link.unlink(missing_ok=True)
        link.symlink_to(path.resolve())
        counts["real"] += 1
    for path, label in zip(chest, labels, strict=True):
        link = out / label / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(path.resolve())
    return counts
