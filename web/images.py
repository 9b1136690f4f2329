"""Images for the study page, decoded by the model's own loader (training.preprocessing)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from training.preprocessing import load_unit_image

DISPLAY_SIDE = 1024


def render_png(path: Path, max_side: int = DISPLAY_SIDE) -> bytes:
    """The radiograph in ``path`` as a PNG: the same Modality LUT, VOI LUT or window and
    polarity the model sees (bright = dense), scaled down to ``max_side``."""
    unit = load_unit_image(path)
    image = Image.fromarray(np.rint(unit * 255.0).astype(np.uint8), mode="L")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
