"""The result image: the deciding radiograph with the heatmap and the result burned in, as a
DICOM Secondary Capture (PS3.3 A.8.1) in the study, in its own series.

Every PACS shows an image, where many show an SR as text at best. The image is the radiograph
the study result came from, decoded by the model's own loader (``training.preprocessing``),
with the Grad-CAM heatmap of the COVID-19 class averaged over the folds
(:mod:`worker.report.heatmap`) and the decision, priority, probability against the threshold,
fold spread, model and an "AI triage aid" caution burned in (Burned In Annotation YES). It is
built with highdicom's ``SCImage``, references its source image (Source Image Sequence) and
names the model in the Contributing Equipment Sequence. docs/sr.md, "Result image", lists
every attribute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import highdicom as hd
import numpy as np
from matplotlib import get_data_path
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian

from training.preprocessing import PreprocessConfig, load_unit_image, to_model_tensor
from worker.errors import WorkerError
from worker.report.content import (
    DECISION_WORDS,
    NO_PRIORITY_WORDS,
    PRIORITY_WORDS,
    SERIES_DESCRIPTION_MAX,
)
from worker.report.heatmap import HeatmapEnsemble, overlay, study_heatmap
from worker.report.identity import ModelIdentity
from worker.report.part10 import write_durably
from worker.report.sr import TEXT_VRS, value_fits_vr
from worker.score.decision import Decision, Priority
from worker.settings import ResultImageMode

logger = logging.getLogger(__name__)

OUTPUT_SIDE = 1024  # the long side of the result image, in pixels
CAUTION = "AI triage aid \u2014 not for diagnostic use"
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
# The image of the report whose SR is series n is series n + 1000 (SR 9901: image 10901), so
# the two never collide however many revisions a study gets (docs/sr.md, "Result image").
IMAGE_SERIES_OFFSET = 1000
_FLAGGED = frozenset({Decision.SUSPECTED, Decision.INDETERMINATE})
_FONTS = Path(get_data_path()) / "fonts" / "ttf"  # DejaVu ships with matplotlib
_SEXES = frozenset({"M", "F", "O"})


class ResultImageError(WorkerError):
    """The result image could not be built or written."""


class ResultImageEnsemble(HeatmapEnsemble, Protocol):
    """What the result image needs of ``worker.score.ensemble.Ensemble``."""

    config: PreprocessConfig

    @property
    def model_version(self) -> str: ...

    @property
    def threshold(self) -> float: ...


def wanted(mode: ResultImageMode | str, decision: Decision) -> bool:
    """Whether ``TRIAGE_RESULT_IMAGE`` asks for an image of a study with this decision:
    ``all``, ``flagged`` (suspected and indeterminate only) or ``off``."""
    mode = ResultImageMode(mode)
    return mode is ResultImageMode.ALL or (mode is ResultImageMode.FLAGGED
                                           and Decision(decision) in _FLAGGED)


@dataclass(frozen=True)
class ImageFinding:
    """The study result the image shows (the report's values)."""

    decision: Decision
    priority: Priority
    probability_mean: float
    probability_std: float
    fold_count: int
    threshold: float
    revision: int = 1

    @property
    def assessed(self) -> bool:
        return self.decision is not Decision.NOT_ASSESSABLE


@dataclass(frozen=True)
class Placement:
    """Where the image goes: its series and instance in the source's study."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1


@dataclass(frozen=True)
class WrittenImage:
    """A result image on disk, as the report records it."""

    path: Path
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int


def image_series_number(sr_series_number: int) -> int:
    """The result image's Series Number beside the SR's of the same report."""
    return sr_series_number + IMAGE_SERIES_OFFSET


def series_description(finding: ImageFinding) -> str:
    """Series Description (LO, 64 characters at most) with the decision and priority, as the
    SR's says them: ``AI COVID-19 triage image: SUSPECTED - HIGH PRIORITY``, and
    ``AI COVID-19 triage image rev 2: ...`` for a later report of the study."""
    label = "AI COVID-19 triage image" + (f" rev {finding.revision}"
                                          if finding.revision > 1 else "")
    priority = PRIORITY_WORDS[finding.priority] if finding.assessed else NO_PRIORITY_WORDS
    return f"{label}: {DECISION_WORDS[finding.decision]} - {priority}"[:SERIES_DESCRIPTION_MAX]


def result_lines(finding: ImageFinding) -> list[str]:
    """The burned-in result, top left: decision and priority, probability, fold spread."""
    if not finding.assessed:
        return ["COVID-19 triage: NOT ASSESSABLE",
                "Image unlike the training data: no probability is given"]
    return [f"COVID-19 triage: {DECISION_WORDS[finding.decision]} - "
            f"{PRIORITY_WORDS[finding.priority]}",
            f"Probability {finding.probability_mean:.3f} "
            f"(threshold {finding.threshold:.3f})",
            f"Fold spread: SD {finding.probability_std:.3f} across {finding.fold_count} folds"]


def caution_lines(finding: ImageFinding, model: ModelIdentity) -> list[str]:
    """The burned-in provenance, bottom left: heatmap method, model, caution."""
    model_line = f"Model: {model.algorithm_name} {model.version}"
    if finding.revision > 1:
        model_line += f", revision {finding.revision}"
    caution = CAUTION + (f" - {NOT_FOR_CLINICAL_USE}" if model.not_for_clinical_use else "")
    heatmap = (f"Heatmap: Grad-CAM of COVID-19, mean of {finding.fold_count} folds"
               if finding.assessed else "No heatmap: the image was not assessed")
    return [heatmap, model_line, caution + " - not verified"]


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(_FONTS / name), size)


def _fitting_size(lines: list[str], width: int, start: int) -> int:
    """The largest font size up to ``start`` at which every line fits ``width`` pixels."""
    size = start
    while size > 8:
        if all(_font(size, bold=True).getlength(line) <= width for line in lines):
            return size
        size -= 1
    return size


def _draw_block(image: Image.Image, lines: list[str], size: int, *, top: bool) -> None:
    """Lines on a dark translucent box in the top or bottom left corner (first line bold)."""
    margin, pad = max(size // 2, 4), max(size // 3, 3)
    step = int(size * 1.3)
    width = max(_font(size, bold=True).getlength(line) for line in lines)
    height = step * len(lines)
    y0 = margin if top else image.height - margin - height - 2 * pad
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((margin, y0, margin + width + 2 * pad, y0 + height + 2 * pad),
                   fill=(0, 0, 0, 170))
    for index, line in enumerate(lines):
        draw.text((margin + pad, y0 + pad + index * step), line, fill=(255, 255, 255, 255),
                  font=_font(size, bold=top and index == 0))
    image.alpha_composite(layer)


def _display_grey(unit: np.ndarray) -> np.ndarray:
    """The unit image scaled so its long side is :data:`OUTPUT_SIDE` (aspect kept)."""
    height, width = unit.shape
    scale = OUTPUT_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = Image.fromarray(np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8), mode="L")
    return np.asarray(grey.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def render(unit: np.ndarray, cam: np.ndarray | None, finding: ImageFinding,
           model: ModelIdentity) -> np.ndarray:
    """The result image's pixels: (H, W, 3) uint8 RGB, long side :data:`OUTPUT_SIDE`."""
    image = Image.fromarray(overlay(_display_grey(unit), cam), mode="RGB").convert("RGBA")
    top, bottom = result_lines(finding), caution_lines(finding, model)
    size = _fitting_size(top + bottom, int(image.width * 0.92), max(12, OUTPUT_SIDE // 42))
    _draw_block(image, top, size, top=True)
    _draw_block(image, bottom, max(8, size - 2), top=False)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """Keep patient names out of logs and warnings while highdicom copies them."""
    def no_names(record: logging.LogRecord) -> bool:
        return "patient_name" not in str(record.msg)

    hd_logger = logging.getLogger("highdicom")
    hd_logger.addFilter(no_names)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\.")
            yield
    finally:
        hd_logger.removeFilter(no_names)


def _reference(header: Dataset) -> Dataset:
    """The header the image copies its patient and study facts from, with values that
    violate their VR (a hash as Patient's Birth Date) or that highdicom refuses (an unknown
    Patient's Sex) left empty; UIDs and Patient ID are kept as they are."""
    reference = Dataset()
    for element in header:
        if element.tag.group >= 0x7FE0:
            continue
        if (element.VR in TEXT_VRS and element.keyword != "PatientID"
                and not value_fits_vr(element)):
            reference.add(DataElement(element.tag, element.VR, None))
        else:
            reference.add(element)
    if str(header.get("PatientSex", "") or "") not in _SEXES:
        reference.PatientSex = None
    return reference


def _equipment(model: ModelIdentity, manufacturer: str,
               now: dt.datetime) -> hd.ContributingEquipment:
    """The model as Processing Equipment (DCM 109102) with its Device UID (PS3.3 C.12.1)."""
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.algorithm_name, software_versions=model.version,
        contribution_datetime=now,
        contribution_description="AI triage of chest radiographs for COVID-19: result image")
    equipment.DeviceUID = model.device_uid
    return equipment


def _source_reference(header: Dataset) -> Dataset:
    """Source Image Sequence item (PS3.3 C.7.6.1.1.4): the deciding radiograph."""
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    return item


def build_result_image(header: Dataset, pixels: np.ndarray, finding: ImageFinding,
                       model: ModelIdentity, placement: Placement, *,
                       manufacturer: str) -> hd.sc.SCImage:
    """The Secondary Capture of ``pixels`` (RGB) in the source's study (PS3.3 A.8.1).

    ``header`` is the source image's (``worker.report.sources.source_header``): its patient
    and study modules are copied, its SOP Instance is the Source Image.
    """
    now = dt.datetime.now(dt.UTC).astimezone()
    orientation = [str(v) for v in header.get("PatientOrientation") or []]
    known_orientation = len(orientation) == 2 and all(orientation)
    try:
        with _quiet_highdicom():
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=_reference(header), pixel_array=pixels,
                photometric_interpretation="RGB", bits_allocated=8,
                coordinate_system="PATIENT",
                patient_orientation=((orientation[0], orientation[1]) if known_orientation
                                     else ("L", "F")),  # a placeholder, emptied below
                series_instance_uid=placement.series_instance_uid,
                series_number=placement.series_number,
                sop_instance_uid=placement.sop_instance_uid,
                instance_number=placement.instance_number, manufacturer=manufacturer,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                contributing_equipment=[_equipment(model, manufacturer, now)],
                series_description=series_description(finding),
                manufacturer_model_name=model.algorithm_name, software_versions=model.version,
                series_date=now.date(), series_time=now.time(),
                content_date=now.date(), content_time=now.time(),
                specific_character_set=header.get("SpecificCharacterSet"))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # The message may quote header values, so it is only chained.
        raise ResultImageError(f"cannot build the result image ({type(exc).__name__}); "
                               "check the source header") from exc
    if not known_orientation:
        image.add_new("PatientOrientation", "CS", None)  # Type 2: unknown stays empty
    image.ConversionType = "WSD"  # workstation (PS3.3 C.8.6.1)
    image.BurnedInAnnotation = "YES"
    image.SourceImageSequence = [_source_reference(header)]
    image.DerivationDescription = (
        "Chest radiograph as decoded for the model, with the Grad-CAM heatmap of the "
        "COVID-19 class averaged over the ensemble's folds and the triage result burned in"
        if finding.assessed else "Chest radiograph with the triage result burned in")
    comments = "; ".join(result_lines(finding) + caution_lines(finding, model))
    image.ImageComments = comments.replace("\u2014", "-")  # the header stays ASCII
    for keyword in ("StudyDescription", "BodyPartExamined"):
        if header.get(keyword):
            setattr(image, keyword, header.get(keyword))
    return image


def write_result_image(image: Dataset, path: Path) -> Path:
    """Write ``image`` as a Part 10 file atomically (tmp, fsync, rename, fsync of the
    folder), then read it back (PS3.10 7.1)."""
    path = Path(path)
    try:
        check = write_durably(image, path)
    except (OSError, ValueError) as exc:
        raise ResultImageError(f"cannot write the result image to {path}: {exc}") from exc
    if UID(check.SOPInstanceUID) != UID(image.SOPInstanceUID):
        raise ResultImageError(f"result image read back from {path} does not match")
    return path


def make_result_image(source: Path, header: Dataset, finding: ImageFinding,
                      model: ModelIdentity, ensemble: ResultImageEnsemble | None,
                      placement: Placement, folder: Path, *, manufacturer: str,
                      stored_cam: np.ndarray | None = None) -> WrittenImage:
    """Decode the deciding radiograph once, take its heatmap (none for a study that was not
    assessed) and write the Secondary Capture to ``folder`` with the result burned in.

    ``stored_cam``: the Grad-CAM the scoring pass recorded (``score.cam``); without it the
    ensemble's fold models run Grad-CAM on the image (:func:`study_heatmap`).
    """
    unit = load_unit_image(source)
    cam = None
    if finding.assessed:
        if stored_cam is not None:
            cam = np.asarray(stored_cam, dtype=np.float32)
        elif ensemble is not None:
            cam = study_heatmap(ensemble, to_model_tensor(unit, **ensemble.config.to_dict()))
        else:
            raise ResultImageError("no Grad-CAM recorded with the score and no ensemble")
    image = build_result_image(header, render(unit, cam, finding, model), finding, model,
                               placement, manufacturer=manufacturer)
    path = write_result_image(image, folder / f"{placement.sop_instance_uid}.dcm")
    return WrittenImage(path, placement.series_instance_uid, placement.sop_instance_uid,
                        placement.series_number)
