"""Reading and checking the header of a received instance without loading its pixel data."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from db.instances import StudyFacts
from dicom_node.errors import NodeError
from dicom_node.status import StoreStatus
from dicom_node.uids import InvalidUIDError, require_uid

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF


class RejectedInstanceError(NodeError):
    """An instance the node refuses, with the C-STORE status to answer."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Header:
    """The facts the node keeps about one instance."""

    dataset: Dataset
    study: StudyFacts
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


class _ParseProblems(logging.Handler):
    """Collects, per thread, what pydicom's lenient reader reported while parsing.

    pydicom reads past many defects with only a warning (also logged on the ``pydicom``
    logger); a truncated dataset must still be refused rather than stored half.
    """

    FATAL = ("End of file reached", "truncated", "premature", "Unexpected end")

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        collected = getattr(self._local, "messages", None)
        if collected is not None:
            collected.append(record.getMessage())

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        self._local.messages = []
        try:
            yield self._local.messages
        finally:
            self._local.messages = None


_PROBLEMS = _ParseProblems()
logging.getLogger("pydicom").addHandler(_PROBLEMS)


def read_header(path: Path) -> Dataset:
    """Parse everything but large values (they stay deferred on disk)."""
    with _PROBLEMS.collect() as problems:
        try:
            dataset = dcmread(path, defer_size=4096)
            dataset.get("Modality")  # force conversion of one element: catches garbage early
        except Exception as exc:  # pydicom raises many types for malformed input
            raise RejectedInstanceError(
                StoreStatus.CANNOT_UNDERSTAND,
                f"dataset can't be parsed: {type(exc).__name__}: {exc}",
            ) from exc
    fatal = [m for m in problems if any(marker in m for marker in _ParseProblems.FATAL)]
    if fatal:
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, f"dataset is truncated: {fatal[0]}"
        )
    if len(dataset) == 0:
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, "dataset has no decodable elements"
        )
    return dataset


def _text(dataset: Dataset, keyword: str, limit: int) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] if text else None


def _check_pixels(dataset: Dataset, file_size: int) -> None:
    keyword = next((k for k in PIXEL_KEYWORDS if k in dataset), None)
    if keyword is None:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no Pixel Data")
    if "Rows" not in dataset or "Columns" not in dataset:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no Rows/Columns")
    raw = dataset.get_item(keyword, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
        if raw.value_tell + raw.length > file_size:
            raise RejectedInstanceError(
                StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "Pixel Data is truncated"
            )
        if raw.length == 0:
            raise RejectedInstanceError(
                StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "Pixel Data is empty"
            )


def _uid(dataset: Dataset, keyword: str, strict: bool) -> str:
    try:
        return require_uid(dataset.get(keyword), keyword, strict=strict)
    except InvalidUIDError as exc:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_INVALID_UID, str(exc)) from exc


def check_header(
    dataset: Dataset,
    *,
    requested_class: str,
    requested_instance: str,
    file_size: int,
    strict_uids: bool = False,
) -> Header:
    """Validate UIDs and pixel data against the C-STORE request (PS3.4 B.2.3)."""
    sop_class = _uid(dataset, "SOPClassUID", strict_uids)
    sop_instance = _uid(dataset, "SOPInstanceUID", strict_uids)
    if sop_class != requested_class:
        raise RejectedInstanceError(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class {sop_class} differs from the request's {requested_class}",
        )
    if sop_instance != requested_instance:
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND_UID_MISMATCH,
            "dataset SOP Instance UID differs from the request's",
        )
    study_uid = _uid(dataset, "StudyInstanceUID", strict_uids)
    series_uid = _uid(dataset, "SeriesInstanceUID", strict_uids)
    _check_pixels(dataset, file_size)
    study = StudyFacts(
        study_instance_uid=study_uid,
        accession_number=_text(dataset, "AccessionNumber", 16),
        patient_id=_text(dataset, "PatientID", 64),
        patient_name=_text(dataset, "PatientName", 324),
        study_date=_text(dataset, "StudyDate", 8),
        study_description=_text(dataset, "StudyDescription", 64),
    )
    return Header(dataset, study, sop_class, sop_instance, series_uid)
