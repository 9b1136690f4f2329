"""Reduced-resolution decoding: decode no more pixels than the model will use.

The model sees 224 px, but a CR is about 2000 x 2500. JPEG 2000 stores a wavelet pyramid, so
its lower resolution levels can be decoded directly (PS3.5 A.4.4; ISO 15444-1 Annex B.5).
Pillow's OpenJPEG decoder exposes that as ``reduce``. The preprocessing asks for at least twice
the model input, then resizes as usual: stopping at the input size itself changed decisions
(the wavelet low-pass is not the resize filter the model was trained with), twice the size did
not (docs/benchmarks.md). Anything else, or anything that fails, is decoded in full.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless

LOGGER = logging.getLogger(__name__)
REDUCIBLE = (JPEG2000Lossless, JPEG2000)
_SIZ, _COD = b"\xff\x51", b"\xff\x52"


def _codestream_facts(frame: bytes) -> tuple[int, int] | None:
    """(sample precision, wavelet decomposition levels) from the SIZ and COD markers."""
    siz, cod = frame.find(_SIZ), frame.find(_COD)
    if siz < 0 or cod < 0 or len(frame) < max(siz + 41, cod + 10):
        return None
    components = int.from_bytes(frame[siz + 38:siz + 40], "big")
    precision = (frame[siz + 40] & 0x7F) + 1
    levels = frame[cod + 9]
    return (precision, levels) if components == 1 else None


def reduction_for(rows: int, columns: int, min_side: int, levels: int) -> int:
    """How many times the image can be halved with its smaller side staying >= ``min_side``."""
    steps, side = 0, min(rows, columns)
    while steps < levels and side // 2 >= min_side:
        side //= 2
        steps += 1
    return steps


def reduced_j2k(ds: Dataset, min_side: int) -> np.ndarray | None:
    """Stored values of the first frame at a reduced resolution, or ``None`` if not possible."""
    if ds.file_meta.get("TransferSyntaxUID") not in REDUCIBLE:
        return None
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("PixelRepresentation", 0)) != 0:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
    facts = _codestream_facts(frame)
    if facts is None:
        return None
    precision, levels = facts
    steps = reduction_for(int(ds.Rows), int(ds.Columns), min_side, levels)
    while steps > 0:
        try:
            with Image.open(io.BytesIO(frame)) as image:
                image.reduce = steps  # type: ignore[method-assign,assignment]  # J2K plugin attr
                image.load()
                values = np.asarray(image)
        except (OSError, ValueError, SyntaxError) as exc:
            LOGGER.debug("reduced J2K decode at level %d failed (%s); trying less", steps, exc)
            steps -= 1
            continue
        if values.dtype == np.uint16 and precision < 16:
            values = values >> (16 - precision)  # Pillow scales samples to 16 bits
        return values
    return None
