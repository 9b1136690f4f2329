"""Images for the study page, decoded by the model's own loader (training.preprocessing)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread

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


def render_result_png(path: Path) -> bytes:
    """The pixels of a result image (the RGB Secondary Capture written with a report: the
    radiograph with its heatmap and the burned-in result) as a PNG."""
    dataset = dcmread(path)
    if dataset.get("PhotometricInterpretation") != "RGB":
        raise ValueError(f"{path.name} is not an RGB result image")
    image = Image.fromarray(np.asarray(dataset.pixel_array, dtype=np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
