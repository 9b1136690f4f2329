"""A tiny ensemble whose image gate was fitted on chest radiographs, and non-chest test images.

The statistics come from the kinds of images the real chest CR/DX files are (those files and
development-set PNGs), written by training's own statistics writer (``training.gate_fit``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread

from tests.support import dicomgen
from tests.worker.conftest import build_ensemble
from training.gate_fit import add_gate
from training.preprocessing import load_unit_image

SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
CHEST_FILES = (  # every CR/DX chest of ../shared/data/dicom (manifest role "chest")
    "fo-dicom_CR-MONO1-10-chest.dcm",
    "pylibjpeg-data_RG1_J2KI.dcm",
    "pylibjpeg-data_966_fixed.dcm",
    "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "nhsx_1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
)
DENTAL = "fo-dicom_CR-ModalitySequenceLUT.dcm"  # panoramic dental CR, no Body Part Examined
HIP = "dicom-test-files_RG2_JLSL.dcm"  # CR HIP


def build_gated_ensemble(directory: Path, shared_data: Path, *, threshold: float = 0.0) -> Path:
    """Two random-weight folds (threshold 0: every assessed image is ``suspected``) with gate
    statistics fitted on the shared chest DICOMs and 12 PNGs, calibrated on 10 other PNGs."""
    build_ensemble(directory, threshold=threshold, seed=3, label="tiny gated ensemble")
    pngs = sorted((shared_data / "cxr").glob("*/*.png"))
    chosen = [pngs[i] for i in np.random.default_rng(0).permutation(len(pngs))[:22]]
    fit = [shared_data / "dicom" / name for name in CHEST_FILES] + chosen[:12]
    add_gate(directory, fit, chosen[12:])
    return directory


def as_plain_cr(source: Path, target: Path, *, study_uid: str | None = None) -> Path:
    """``source``'s picture as an uncompressed CR with no Body Part Examined, View Position or
    descriptions: nothing in the header contradicts a chest, only the pixels can."""
    unit = load_unit_image(source, size=None)
    step = max(1, max(unit.shape) // 512)
    pixels = np.round(unit[::step, ::step] * 4095).astype(np.uint16)
    ds = dicomgen.radiograph(study_uid=study_uid, body_part=None, view=None,
                             rows=pixels.shape[0], columns=pixels.shape[1])
    ds.PixelData = pixels.tobytes()
    return dicomgen.write(ds, target)


def without_body_part(source: Path, target: Path) -> Path:
    """A copy of a real file with Body Part Examined removed (everything else as it was)."""
    ds = dcmread(source, force=True)
    if "BodyPartExamined" in ds:
        del ds.BodyPartExamined
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target
