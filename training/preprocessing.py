"""Image preprocessing shared by training and the worker: one code path from file to tensor.

Use it as::

    config = PreprocessConfig.from_dict(manifest.preprocessing)
    tensor = to_model_tensor(load_unit_image(ds, size=config.size), **config.to_dict())

``load_unit_image`` turns a DICOM dataset or file, or a PNG/JPEG, into a float32 greyscale
image in [0, 1] where higher means brighter (more attenuation, as displayed). Passing ``size``
resizes the stored values *before* the grey-scale pipeline, which is 1.7x faster on large CRs
(PERF-NOTES) and is exact for linear rescale/windowing inside the window.
``to_model_tensor`` resizes (a no-op when already sized), replicates to 3 channels and
normalises with the ImageNet statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from PIL import Image
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSTransferSyntaxes,
)

from training.decode import reduced_j2k
from training.errors import TrainingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_METHODS = ("bilinear", "area")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input; stored in ``ensemble.json`` as ``preprocessing``.

    The keys of :meth:`to_dict` are exactly the keyword arguments of :func:`to_model_tensor`.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise TrainingError(f"input size {self.size} is too small; use at least 8 px")
        if self.resize not in RESIZE_METHODS:
            raise TrainingError(
                f"resize method {self.resize!r} unknown; use one of {RESIZE_METHODS}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a newer format is noticed."""
        unknown = set(data) - {"size", "mean", "std", "resize"}
        if unknown:
            raise TrainingError(f"unknown preprocessing keys {sorted(unknown)}; update cxr-triage")
        mean = tuple(float(v) for v in data.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in data.get("std", IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3:
            raise TrainingError("preprocessing mean and std need 3 values each")
        return cls(
            size=int(data.get("size", 224)),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            resize=str(data.get("resize", "bilinear")),
        )


def resize_array(arr: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Resize a 2-D array to ``size`` x ``size`` (float32), antialiased when shrinking.

    Squashing rather than padding follows the paper ("re-sample all images to 224x224").
    """
    if arr.shape == (size, size):
        return arr.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if method == "area":
        out = F.interpolate(tensor, size=(size, size), mode="area")
    else:
        out = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return out[0, 0].numpy()


def _table_range(ds: Dataset, keyword: str) -> tuple[float, float]:
    """Range of the entries of a Modality or VOI LUT table.

    Used instead of the descriptor's bit depth because real files declare 16 bits for
    10-bit tables, which would leave the image almost white.
    """
    count, first = (int(v) for v in ds[keyword][0].LUTDescriptor[:2])
    indices = np.arange(first, first + (count or 2**16), dtype=np.int64)
    if keyword == "VOILUTSequence":
        table = apply_voi_lut(indices, ds, prefer_lut=True)
    else:
        table = apply_modality_lut(indices, ds)
    return float(np.min(table)), float(np.max(table))


def _output_range(ds: Dataset) -> tuple[float, float]:
    """Range of the modality-LUT output, as pydicom's windowing uses it (PS3.3 C.11.1, C.11.2)."""
    if ds.get("ModalityLUTSequence"):
        if "WindowCenter" in ds and "WindowWidth" in ds:
            bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
            return 0.0, float(2**bits - 1)
        return _table_range(ds, "ModalityLUTSequence")
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


# Reduced JPEG 2000 decoding stops at twice the model input: the wavelet low-pass alone is a
# different filter from the antialiased resize the model was trained with (bench/decode.py).
REDUCED_DECODE_FACTOR = 2


def _stored_grey(ds: Dataset, min_side: int | None = None) -> np.ndarray:
    """First frame of the stored pixel values as one grey plane.

    With ``min_side``, codecs that can decode a lower resolution directly (JPEG 2000) do so,
    keeping the smaller side at least ``min_side`` (:mod:`training.decode`).
    """
    meta = ds.get("file_meta") or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        # Files without a meta group (PS3.10 7.1 allows none pre-2004) keep their encoding.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit in (True, None) and little in (True, None)
            else ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian
        )
        ds.file_meta = meta
    if meta.TransferSyntaxUID in JPEGLSTransferSyntaxes:
        # pyjpegls is 3.6x faster than pydicom's default JPEG-LS plugin (PERF-NOTES).
        ds.pixel_array_options(decoding_plugin="pyjpegls")
    reduced = reduced_j2k(ds, min_side) if min_side is not None else None
    arr = reduced if reduced is not None else ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        arr = arr.mean(axis=-1)  # colour secondary captures: luminance is close enough
    return arr


def dicom_unit_image(
    ds: Dataset, *, size: int | None = None, resize: str = "bilinear", reduced_decode: bool = True
) -> np.ndarray:
    """Grey-scale pipeline of PS3.4 N.2.1: Modality LUT, VOI LUT or window, then polarity.

    With ``size`` the stored values are resized first (then rounded where a LUT table needs
    integer indices). MONOCHROME1 (PS3.3 C.7.6.3.1.2) and Presentation LUT Shape INVERSE
    (C.11.6.1.2) both mean "invert"; DX files often carry both for the same inversion, so
    either one inverts once rather than the two cancelling. ``reduced_decode`` lets JPEG 2000
    decode a lower resolution level that still covers twice ``size`` (:mod:`training.decode`).
    """
    min_side = REDUCED_DECODE_FACTOR * size if reduced_decode and size else None
    arr = _stored_grey(ds, min_side=min_side)
    tables = bool(ds.get("ModalityLUTSequence")) or bool(ds.get("VOILUTSequence"))
    if size is not None:
        arr = resize_array(arr, size, resize)
        if tables:
            arr = np.rint(arr).astype(np.int64)
    arr = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence"):
        arr = apply_voi_lut(np.rint(arr).astype(np.int64), ds, prefer_lut=True)
        low, high = _table_range(ds, "VOILUTSequence")
    else:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            arr = apply_voi_lut(arr, ds, prefer_lut=False)
        low, high = _output_range(ds)
    unit = (np.asarray(arr, dtype=np.float64) - low) / max(high - low, 1e-12)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:
        unit = 1.0 - unit
    return unit


def _raster_unit_image(path: Path, size: int | None, resize: str) -> np.ndarray:
    """PNG or JPEG as grey in [0, 1]; 16-bit PNGs are scaled by 65535."""
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(image, dtype=np.float32) / 65535.0
        else:
            arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if size is not None:
        arr = resize_array(arr, size, resize)
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def load_unit_image(
    source: str | Path | Dataset, *, size: int | None = None, resize: str = "bilinear"
) -> np.ndarray:
    """Load a radiograph as float32 H x W in [0, 1], bright = dense, optionally pre-resized.

    Parameters
    ----------
    source
        A pydicom ``Dataset`` (with pixel data), or the path of a DICOM, PNG or JPEG file.
    size
        When given, the result is ``size`` x ``size``; resizing happens before windowing.
    resize
        ``"bilinear"`` (antialiased) or ``"area"``.

    Raises
    ------
    TrainingError
        The file can't be read or decoded; the message names it.
    """
    if isinstance(source, Dataset):
        try:
            return dicom_unit_image(source, size=size, resize=resize)
        except (AttributeError, KeyError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise TrainingError(f"cannot decode DICOM pixel data: {exc}") from exc
    path = Path(source)
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _raster_unit_image(path, size, resize)
        ds = dcmread(path, force=True)
        return dicom_unit_image(ds, size=size, resize=resize)
    except TrainingError:
        raise
    except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError, RuntimeError,
            NotImplementedError, TypeError, Image.DecompressionBombError) as exc:
        raise TrainingError(
            f"cannot read image {path}: {exc}; fix or remove the file "
            "(PNG, JPEG or DICOM with pixel data are supported)"
        ) from exc


def normalize_unit(
    unit: torch.Tensor, *, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(..., 1, H, W) in [0, 1] to (..., 3, H, W) ImageNet-normalised."""
    rgb = unit.expand(*unit.shape[:-3], 3, *unit.shape[-2:])
    mean_t = torch.tensor(mean, dtype=unit.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=unit.dtype).view(3, 1, 1)
    return (rgb - mean_t) / std_t


def to_model_tensor(
    unit_image: np.ndarray,
    *,
    size: int = 224,
    mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
    std: tuple[float, ...] | list[float] = IMAGENET_STD,
    resize: str = "bilinear",
) -> torch.Tensor:
    """Turn a unit image into the (3, size, size) float32 tensor the model takes."""
    if unit_image.ndim != 2:
        raise TrainingError(f"expected a 2-D grey image, got shape {unit_image.shape}")
    sized = resize_array(unit_image, size, resize)
    tensor = torch.from_numpy(np.ascontiguousarray(sized))[None]
    return normalize_unit(tensor, mean=tuple(mean), std=tuple(std)).contiguous()


def preprocess(source: str | Path | Dataset, config: PreprocessConfig) -> torch.Tensor:
    """Fast path: ``load_unit_image`` pre-resized, then ``to_model_tensor``."""
    unit = load_unit_image(source, size=config.size, resize=config.resize)
    return to_model_tensor(unit, **config.to_dict())

