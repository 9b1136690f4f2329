"""The COVID-19 triage result as a DICOM Comprehensive 3D SR (TID 1500, IHE AIR style).

The report is built with highdicom templates only, never hand-assembled content
items: a Measurement Report (PS3.16 TID 1500) whose Measurement Groups (TID 1501,
``worker.report.sr_tree``) hold the decision and priority first, then the mean
probability with its operating threshold and the standard deviation over the folds,
then each fold's probability. Patient and study modules are copied from the scored
images, the model is described in the Contributing Equipment Sequence (PS3.3
C.12.1) and an earlier report is referenced in the Predecessor Documents Sequence
(PS3.3 C.17.2). Each revision is a series of its own whose Series Description states
the decision and the priority (``worker.report.content``). docs/sr.md describes the
content tree, the headers and the codes.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import highdicom as hd
from highdicom.sr import Comprehensive3DSR
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import validate_value

from worker.report import codes as sr_codes
from worker.report.content import (
    PredecessorRef,
    SRError,
    StudyFinding,
    series_description,
    sr_series_number,
)
from worker.report.identity import ModelIdentity
from worker.report.part10 import write_durably
from worker.report.sr_tree import NOT_FOR_CLINICAL_USE, measurement_report

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SERIES_NUMBER",
    "NOT_FOR_CLINICAL_USE",
    "PredecessorRef",
    "SRError",
    "StudyFinding",
    "build_triage_sr",
    "series_description",
    "write_sr",
]

DEFAULT_SERIES_NUMBER = sr_series_number(0)  # a study's first report: 9901
# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1)
# that highdicom reads from the first evidence item; absent ones are written empty.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# VRs whose values are checked; UIDs and binary values are kept as they are.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
)



def value_fits_vr(element: DataElement) -> bool:
    """Whether a value satisfies its VR (PS3.5 6.2)."""
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, None if value is None else str(value), config.RAISE)
    except ValueError:
        return False
    return True


def _evidence_header(source: Dataset) -> Dataset:
    """Copy a source header for use as evidence, without pixel data.

    Type 2 patient/study attributes that are absent are added empty, and values
    that violate their VR (for example a hash as Patient's Birth Date) are
    written empty: highdicom rejects them and they would make the SR invalid.
    UIDs and Patient ID are always kept as they are.
    """
    header = Dataset()
    blanked = []
    for element in source:
        if element.tag.group >= 0x7FE0:
            continue
        if element.VR not in TEXT_VRS or element.keyword == "PatientID" or value_fits_vr(element):
            header.add(element)
        else:
            blanked.append(element.keyword or str(element.tag))
            header.add(DataElement(element.tag, element.VR, None))
    if blanked:
        logger.warning(
            "source %s: values violating their VR are written empty: %s",
            source.get("SOPInstanceUID", "?"),
            ", ".join(blanked),
        )
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _library_header(header: Dataset) -> Dataset:
    """The header for the image library (TID 1601).

    highdicom adds the projection radiography descriptors (TID 1603) for CR/DX
    images and needs Patient Orientation and Imager Pixel Spacing for them; many
    real radiographs leave these empty. Rather than invent values, such images
    get the general descriptors (TID 1602) only.
    """
    orientation = header.get("PatientOrientation") or []
    spacing = header.get("ImagerPixelSpacing") or []
    if len(orientation) == 2 and len(spacing) == 2:
        return header
    library_header = Dataset()
    library_header.update(header)
    library_header.Modality = ""
    return library_header


def _select_scored(sources: Sequence[Dataset], finding: StudyFinding) -> list[Dataset]:
    """The source headers that were scored, in the finding's order."""
    if not sources:
        raise SRError("no source images given; the SR needs the scored study's images")
    study_uids = {str(ds.StudyInstanceUID) for ds in sources}
    if len(study_uids) != 1:
        raise SRError(f"source images span {len(study_uids)} studies; build one SR per study")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = [uid for uid in finding.scored_sop_instance_uids if uid not in by_uid]
    if missing:
        raise SRError(f"scored SOP Instance UIDs not among the sources: {', '.join(missing)}")
    for uid in finding.scored_sop_instance_uids:
        if "Rows" not in by_uid[uid] or "Columns" not in by_uid[uid]:
            raise SRError(f"source {uid} has no Rows/Columns; pass its full header")
    return [_evidence_header(by_uid[uid]) for uid in finding.scored_sop_instance_uids]


@contextlib.contextmanager
def _no_patient_names_in_logs() -> Iterator[None]:
    """Keep patient names out of logs and warnings while highdicom copies them."""
    # highdicom.base logs 'value of argument "patient_name" ...' with the name in it.
    def phi_filter(record: logging.LogRecord) -> bool:
        return "patient_name" not in str(record.msg)

    hd_logger = logging.getLogger("highdicom.base")
    hd_logger.addFilter(phi_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\.")
            yield
    finally:
        hd_logger.removeFilter(phi_filter)


def _contributing_equipment(model: ModelIdentity, manufacturer: str,
                            created: datetime.datetime) -> hd.ContributingEquipment:
    """The model as Processing Equipment (DCM 109102), PS3.3 C.12.1.1.5."""
    description = "AI triage of chest radiographs for COVID-19"
    if model.not_for_clinical_use:
        description += f"; {NOT_FOR_CLINICAL_USE}"
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.algorithm_name,
        software_versions=model.version,
        contribution_datetime=created,
        contribution_description=description,
    )
    equipment.DeviceUID = model.device_uid  # Device UID (0018,1002), not a highdicom argument
    return equipment


def build_triage_sr(
    sources: Sequence[Dataset],
    finding: StudyFinding,
    model: ModelIdentity,
    *,
    manufacturer: str,
    institution_name: str | None = None,
    predecessor: PredecessorRef | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    revision: int = 1,
    created: datetime.datetime | None = None,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Comprehensive3DSR:
    """Build the triage report for one study (PS3.16 TID 1500; PS3.3 A.35.13).

    Parameters
    ----------
    sources
        Headers of the study's images (``stop_before_pixels`` is enough); the
        ones named in ``finding.scored_sop_instance_uids`` become the evidence.
    finding, model
        The study result and the ensemble that produced it.
    manufacturer, institution_name
        General Equipment Module values for the SR and the contributing equipment.
    predecessor
        An earlier report this one supersedes (Predecessor Documents Sequence).
    series_number, revision
        The report's series number (``content.sr_series_number``) and its place among
        the study's reports, which the Series Description states from 2 on.
    created
        Series and Content Date/Time (local time; default: now).
    instance_number, series_instance_uid, sop_instance_uid
        Placement of the SR; the UIDs are new ones unless given.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Unverified, complete, preliminary report.
    """
    scored = _select_scored(sources, finding)
    when = (created or datetime.datetime.now(datetime.UTC)).astimezone()
    try:
        with _no_patient_names_in_logs():
            report = measurement_report(finding, model, scored,
                                        [_library_header(ds) for ds in scored], manufacturer)
            sr = Comprehensive3DSR(
                evidence=scored,
                content=report,
                series_instance_uid=series_instance_uid or generate_uid(),
                series_number=series_number,
                sop_instance_uid=sop_instance_uid or generate_uid(),
                instance_number=instance_number,
                manufacturer=manufacturer,
                institution_name=institution_name,
                is_complete=True,
                is_final=False,
                is_verified=False,
                previous_versions=[predecessor.as_dataset()] if predecessor else None,
                contributing_equipment=[_contributing_equipment(model, manufacturer, when)],
                series_description=series_description(
                    finding, revision=revision,
                    not_for_clinical_use=model.not_for_clinical_use),
                manufacturer_model_name=model.algorithm_name,
                software_versions=model.version,
                coding_schemes=[sr_codes.local_coding_scheme()],
                series_date=when.date(),
                series_time=when.time(),
                content_date=when.date(),
                content_time=when.time(),
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # The message of exc may quote header values, so it is only chained.
        raise SRError(
            f"cannot build the triage SR for study {scored[0].StudyInstanceUID} "
            f"({type(exc).__name__}); check the source headers"
        ) from exc
    logger.info(
        "study %s: built triage SR %s (decision=%s, series %d, revision %d)",
        scored[0].StudyInstanceUID,
        sr.SOPInstanceUID,
        finding.decision.value,
        series_number,
        revision,
    )
    return sr


def write_sr(sr: Dataset, path: Path) -> Path:
    """Write the SR as a Part 10 file atomically, then read it back (PS3.10 7.1).

    The file goes to a temporary name beside ``path``, is fsynced and renamed
    over ``path``; the directory is fsynced too. Reading back checks that the
    file parses and holds the same SOP Instance UID.
    """
    path = Path(path)
    try:
        check = write_durably(sr, path)
    except (OSError, ValueError) as exc:
        raise SRError(f"cannot write SR to {path}: {exc}; check the directory and disk") from exc
    if UID(check.SOPInstanceUID) != UID(sr.SOPInstanceUID) or check.Modality != "SR":
        raise SRError(f"SR read back from {path} does not match what was written")
    return path
