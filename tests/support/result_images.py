"""Measuring a rendered result image: how much of it is coloured (the heatmap) or grey."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

COLOUR_SATURATION = 40  # max(R, G, B) - min(R, G, B) of a pixel the heatmap coloured


def rgb_of_png(png: bytes) -> np.ndarray:
    """A PNG as an (H, W, 3) uint8 array (grey PNGs are replicated to three channels)."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)


def colour_fraction(rgb: np.ndarray, *, skip_rows: float = 0.15) -> float:
    """Share of the pixels whose channels differ by at least :data:`COLOUR_SATURATION`,
    leaving out the top and bottom ``skip_rows`` of the height (the burned-in text boxes)."""
    height = rgb.shape[0]
    band = rgb[int(height * skip_rows): int(height * (1 - skip_rows))].astype(np.int16)
    saturation = band.max(axis=2) - band.min(axis=2)
    return float((saturation >= COLOUR_SATURATION).mean())
