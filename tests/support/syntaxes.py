"""Generated radiographs in every transfer syntax the node accepts (PS3.5 Section 10 and Annex A).

Each encoder is a real codec: pydicom's encoders (RLE, JPEG-LS through pyjpegls, JPEG 2000
through pylibjpeg-openjpeg), dcmtk's ``dcmcjpeg`` (JPEG processes 1, 2/4 and 14) and
``dcmconv`` (big endian), and OpenJPH's ``ojph_compress`` (HTJ2K; Debian openjph-tools).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.support import dicomgen

Encoder = Callable[[Dataset, Path], Path]


def _smooth_pixels(ds: Dataset, bits: int) -> np.ndarray:
    """A smooth gradient with a disc: compresses well and survives lossy codecs recognisably."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    y, x = np.mgrid[0:rows, 0:columns]
    top = 2**bits - 1
    values = (x / columns * 0.6 + y / rows * 0.3) * top
    disc = (y - rows / 2) ** 2 + (x - columns / 2) ** 2 < (min(rows, columns) / 4) ** 2
    values[disc] = top * 0.95
    return values.astype(np.uint16 if bits > 8 else np.uint8)


def radiograph(bits: int = 12, **kwargs: object) -> Dataset:
    """``dicomgen.radiograph`` with smooth pixels at ``bits`` (8 or 12) bits stored."""
    ds = dicomgen.radiograph(**kwargs)  # type: ignore[arg-type]
    pixels = _smooth_pixels(ds, bits)
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelData = pixels.tobytes()
    return ds


def _pydicom(uid: UID, **options: object) -> Encoder:
    def encode(ds: Dataset, path: Path) -> Path:
        ds.compress(uid, encoding_plugin=str(options.pop("plugin", "")), **options)
        return dicomgen.write(ds, path)
    return encode


def _uncompressed(uid: UID) -> Encoder:
    def encode(ds: Dataset, path: Path) -> Path:
        ds.file_meta.TransferSyntaxUID = uid
        return dicomgen.write(ds, path)
    return encode


def _dcmtk(tool: str, *flags: str) -> Encoder:
    def encode(ds: Dataset, path: Path) -> Path:
        source = dicomgen.write(ds, path.with_suffix(".src.dcm"))
        subprocess.run([tool, *flags, str(source), str(path)], check=True, capture_output=True)
        source.unlink()
        return path
    return encode


def _htj2k(uid: UID, *flags: str) -> Encoder:
    """OpenJPH codestream from a PGM, encapsulated (PS3.5 A.4)."""
    def encode(ds: Dataset, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pgm, j2c = path.with_suffix(".pgm"), path.with_suffix(".j2c")
        top = 2 ** int(ds.BitsStored) - 1
        pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
        pgm.write_bytes(f"P5 {ds.Columns} {ds.Rows} {top}\n".encode()
                        + pixels.astype(">u2").tobytes())
        subprocess.run(["ojph_compress", "-i", str(pgm), "-o", str(j2c), *flags],
                       check=True, capture_output=True)
        ds.PixelData = encapsulate([j2c.read_bytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
        if uid == HTJ2K:
            ds.LossyImageCompression = "01"
        pgm.unlink()
        j2c.unlink()
        return dicomgen.write(ds, path)
    return encode


# uid -> (bits stored, encoder). JPEG baseline is 8-bit only (ISO 10918-1 process 1).
ENCODERS: dict[UID, tuple[int, Encoder]] = {
    ImplicitVRLittleEndian: (12, _uncompressed(ImplicitVRLittleEndian)),
    ExplicitVRLittleEndian: (12, _uncompressed(ExplicitVRLittleEndian)),
    DeflatedExplicitVRLittleEndian: (12, _uncompressed(DeflatedExplicitVRLittleEndian)),
    ExplicitVRBigEndian: (12, _dcmtk("dcmconv", "+tb")),
    RLELossless: (12, _pydicom(RLELossless)),
    JPEGBaseline8Bit: (8, _dcmtk("dcmcjpeg", "+eb")),
    JPEGExtended12Bit: (12, _dcmtk("dcmcjpeg", "+ee")),
    JPEGLossless: (12, _dcmtk("dcmcjpeg", "+el")),
    JPEGLosslessSV1: (12, _dcmtk("dcmcjpeg", "+e1")),
    JPEGLSLossless: (12, _pydicom(JPEGLSLossless)),
    JPEGLSNearLossless: (12, _pydicom(JPEGLSNearLossless, jls_error=2)),
    JPEG2000Lossless: (12, _pydicom(JPEG2000Lossless)),
    JPEG2000: (12, _pydicom(JPEG2000, j2k_cr=[10])),
    HTJ2KLossless: (12, _htj2k(HTJ2KLossless, "-reversible", "true", "-prog_order", "LRCP")),
    HTJ2KLosslessRPCL: (12, _htj2k(HTJ2KLosslessRPCL, "-reversible", "true",
                                   "-prog_order", "RPCL")),
    HTJ2K: (12, _htj2k(HTJ2K, "-reversible", "false", "-qstep", "0.01")),
}


def write_in(uid: UID, path: Path, **kwargs: object) -> Path:
    """A generated CR chest radiograph encoded in transfer syntax ``uid``, written to ``path``."""
    bits, encode = ENCODERS[uid]
    written = encode(radiograph(bits=bits, **kwargs), path)
    assert dcmread(written, stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    return written
