"""Fixtures for the training tests: the shared dev data, synthetic images, a tiny trained run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.cli import main


@pytest.fixture(scope="session")
def cxr_dir(shared_data: Path) -> Path:
    """The 336-image covid/normal development set (``shared_data`` is the root fixture)."""
    if not (shared_data / "cxr" / "manifest.csv").is_file():
        pytest.fail(f"development images not found in {shared_data / 'cxr'}")
    return shared_data / "cxr"


def gradient_png(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """Write a small 8-bit grey PNG with structure (not constant) and return its pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = (xx * 3 + yy * 2 + rng.integers(0, 40, size)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def make_folder_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Build ``root/<class>/*.png`` with ``per_class`` images per class."""
    def build(per_class: int = 4, classes: tuple[str, ...] = ("covid", "normal")) -> Path:
        root = tmp_path / "folder_data"
        for c, name in enumerate(classes):
            for i in range(per_class):
                gradient_png(root / name / f"{name}_{i}.png", seed=c * 100 + i)
        return root

    return build


TINY_TRAIN = ["--folds", "2", "--epochs", "1", "--input-size", "64", "--weights", "none",
              "--limit", "8", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cxr_dir: Path) -> Path:
    """A real ``cxr-triage train`` on the shared data: 2 folds, 1 epoch, 64 px, random init."""
    out = tmp_path_factory.mktemp("tiny_run") / "ensemble"
    code = main(["train", "--data", str(cxr_dir), "--out", str(out), *TINY_TRAIN])
    assert code == 0
    return out
