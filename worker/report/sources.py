"""The source headers a triage SR is built from: the recorded facts first, the file for the rest.

The node recorded each image's identity (UIDs, SOP class, modality) and its study's patient and
study facts when it stored it. Those recorded facts always win; the image's own header, read
once and defensively, only adds what was not recorded (Rows and Columns, birth date, sex...).
An element that can't be decoded, a value that violates its VR or an unknown character set is
left out, so a malformed header can't stop the report (PS3.3 C.7.1.1, C.7.2.1 list the Patient
and General Study attributes the SR copies). With ``minimal`` nothing but the recorded facts and
the image size is taken from the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from db.models import Instance, Study
from worker.report.content import SRError
from worker.report.sr import TEXT_VRS, value_fits_vr

logger = logging.getLogger(__name__)

_PIXEL_GROUPS = 0x7FE0
_UTF8 = "ISO_IR 192"
# Image attributes the SR's image library needs (PS3.16 TID 1601-1603); the minimal source.
_IMAGE_SIZE = ("Rows", "Columns", "PatientOrientation", "ImagerPixelSpacing")


class SourceUnavailableError(SRError):
    """An image file can't be read now (storage not mounted, I/O error): retried later."""


def _recorded(study: Study, instance: Instance) -> dict[str, str | None]:
    """What the node recorded, by keyword (the UIDs are kept exactly as received)."""
    return {
        "SOPClassUID": instance.sop_class_uid,
        "SOPInstanceUID": instance.sop_instance_uid,
        "SeriesInstanceUID": instance.series_instance_uid,
        "StudyInstanceUID": study.study_instance_uid,
        "PatientID": study.patient_id,
        "PatientName": study.patient_name,
        "AccessionNumber": study.accession_number,
        "StudyDate": study.study_date,
        "StudyDescription": study.study_description,
        "Modality": instance.modality,
    }


def _decoded(element: DataElement) -> DataElement:
    """The element with its value (and every nested item) decoded; raises if it can't be."""
    value = element.value
    if isinstance(value, Sequence):
        for item in value:
            for nested in item:
                _decoded(nested)
    return element


def _valid(element: DataElement) -> bool:
    """Whether a text value satisfies its VR (PS3.5 6.2); other VRs are kept as they are."""
    return element.VR not in TEXT_VRS or value_fits_vr(element)


def _known_charset(value: object) -> bool:
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return all(str(v or "") in python_encoding for v in values)


def _readable(raw: Dataset, minimal: bool, dropped: list[str]) -> Dataset:
    """The elements of ``raw`` that decode and are valid (``minimal``: the image size only)."""
    header = Dataset()
    for tag in list(raw.keys()):
        if tag.group >= _PIXEL_GROUPS or tag.group == 0x0002:
            continue
        try:
            element = _decoded(raw[tag])
        except Exception:  # any decoding error: leave the element out, keep the rest
            dropped.append(str(tag))
            continue
        if minimal and element.keyword not in _IMAGE_SIZE:
            continue
        if element.keyword == "SpecificCharacterSet" and not _known_charset(element.value):
            dropped.append(element.keyword)
        elif _valid(element):
            header.add(element)
        else:
            dropped.append(element.keyword or str(tag))
    return header


def _read(path: Path, instance_id: int, dropped: list[str]) -> Dataset:
    """The header of ``path`` without pixels; an empty one when it can't be parsed."""
    try:
        return dcmread(path, stop_before_pixels=True, force=True)
    except OSError as exc:
        raise SourceUnavailableError(
            f"cannot read the image of instance {instance_id} ({exc.strerror or exc}); "
            "is the storage mounted?") from exc
    except Exception as exc:  # a malformed file: the recorded facts stand in for its header
        dropped.append(f"the whole header ({type(exc).__name__})")
        return Dataset()


def source_header(study: Study, instance: Instance, *, minimal: bool = False) -> Dataset:
    """The header the SR takes as the source of ``instance``: recorded facts plus what of the
    file's header is readable and valid (``minimal``: only the image size from the file)."""
    dropped: list[str] = []
    header = _readable(_read(Path(instance.file_path), instance.id, dropped), minimal, dropped)
    recorded = _recorded(study, instance)
    for keyword, value in recorded.items():
        if keyword in header:
            del header[keyword]
        setattr(header, keyword, value)
        if not keyword.endswith("UID") and keyword != "PatientID" and not _valid(header[keyword]):
            setattr(header, keyword, None)  # written empty rather than invalid
    if any(value and not value.isascii() for value in recorded.values()):
        header.SpecificCharacterSet = _UTF8  # the recorded text is Unicode; write it as UTF-8
    if "Rows" not in header or "Columns" not in header:
        raise SRError(f"instance {instance.id}: the image size (Rows, Columns) can't be read "
                      "from its file and is not recorded; resend the image")
    if dropped:
        logger.warning("instance %d: left out of the SR source (unreadable or invalid): %s",
                       instance.id, ", ".join(dropped))
    return header
