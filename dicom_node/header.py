"""Reading and checking the header of a received instance, before anything is committed.

Every value the node keeps is read here, inside the guarded check, into plain values: nothing is
read lazily from the file afterwards (by then it has been renamed). A deflated dataset is
inflated first into a bounded scratch file (:mod:`dicom_node.deflate`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from db.instances import StudyFacts
from dicom_node.deflate import MAX_INFLATED_BYTES, InflateError, inflated_copy
from dicom_node.errors import NodeError
from dicom_node.status import StoreStatus
from dicom_node.uids import InvalidUIDError, require_uid

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFER_SIZE = 4096  # larger values stay on disk unless the node needs them (then read here)
FACT_KEYWORDS = ("Modality", "BodyPartExamined", "ViewPosition")


class RejectedInstanceError(NodeError):
    """An instance the node refuses, with the C-STORE status to answer."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StoreRequest:
    """What the C-STORE request says about the dataset it carries."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Header:
    """The facts the node keeps about one instance, as plain values."""

    study: StudyFacts
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    attributes: Mapping[str, str]  # keyword -> stripped text ("" when absent)


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


def inspect(
    path: Path,
    request: StoreRequest,
    *,
    keywords: Iterable[str] = (),
    strict_uids: bool = False,
    max_inflated: int = MAX_INFLATED_BYTES,
) -> Header:
    """Parse and check a received file and read everything the node keeps from it.

    ``keywords`` are the attributes the triage rules need besides the ones always kept. Raises
    :class:`RejectedInstanceError` with the status to answer; the file is never modified.
    """
    deflated = DeflatedExplicitVRLittleEndian in (request.transfer_syntax_uid, _syntax_of(path))
    if not deflated:  # pydicom would inflate a deflated file whole, unbounded
        return _inspect_plain(path, request, keywords, strict_uids)
    try:
        with inflated_copy(path, max_inflated) as plain:
            return _inspect_plain(plain, request, keywords, strict_uids)
    except InflateError as exc:
        status = (StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE if exc.too_large
                  else StoreStatus.CANNOT_UNDERSTAND)
        raise RejectedInstanceError(status, str(exc)) from exc


def _syntax_of(path: Path) -> str | None:
    """The transfer syntax the File Meta names (the receiver writes the negotiated one)."""
    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", "")) or None
    except Exception as exc:  # pydicom raises many types for malformed input
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, f"File Meta can't be parsed ({type(exc).__name__})"
        ) from exc


def _inspect_plain(path: Path, request: StoreRequest, keywords: Iterable[str],
                   strict_uids: bool) -> Header:
    with _PROBLEMS.collect() as problems:
        dataset = read_header(path)
        _refuse_if_truncated(problems)
        header = check_header(
            dataset,
            requested_class=request.sop_class_uid,
            requested_instance=request.sop_instance_uid,
            file_size=path.stat().st_size,
            strict_uids=strict_uids,
            keywords=keywords,
        )
        _refuse_if_truncated(problems)  # deferred values read by the check
    return header


def _refuse_if_truncated(problems: list[str]) -> None:
    fatal = [m for m in problems if any(marker in m for marker in _ParseProblems.FATAL)]
    if fatal:
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, f"dataset is truncated: {fatal[0]}"
        )


def read_header(path: Path) -> Dataset:
    """Parse everything but large values (they stay deferred on disk)."""
    try:
        dataset = dcmread(path, defer_size=DEFER_SIZE)
        dataset.get("Modality")  # force conversion of one element: catches garbage early
    except Exception as exc:  # pydicom raises many types for malformed input
        # the type only: a message may quote header values (patient data)
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, f"dataset can't be parsed ({type(exc).__name__})"
        ) from exc
    if len(dataset) == 0:
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, "dataset has no decodable elements"
        )
    return dataset


def _raw_text(dataset: Dataset, keyword: str) -> str | None:
    """An attribute's value as text, read now (deferred values too); ``None`` when absent."""
    try:
        value = dataset.get(keyword)
        return None if value is None else str(value)
    except Exception as exc:  # pydicom converts values lazily and raises many types
        raise RejectedInstanceError(
            StoreStatus.CANNOT_UNDERSTAND, f"{keyword} can't be decoded ({type(exc).__name__})"
        ) from exc


def _clean(text: str | None) -> str:
    """Text a database column can hold: no NUL characters, no unpaired surrogates."""
    if not text:
        return ""
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text.strip()


def _text(dataset: Dataset, keyword: str, limit: int) -> str | None:
    return _clean(_raw_text(dataset, keyword))[:limit] or None


def _check_pixels(dataset: Dataset, file_size: int) -> None:
    keyword = next((k for k in PIXEL_KEYWORDS if k in dataset), None)
    if keyword is None:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no Pixel Data")
    if "Rows" not in dataset or "Columns" not in dataset:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no Rows/Columns")
    raw = dataset.get_item(keyword, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
        # file_size is the size of the file parsed: the inflated copy for a deflated dataset
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
        return require_uid(_raw_text(dataset, keyword), keyword, strict=strict)
    except InvalidUIDError as exc:
        raise RejectedInstanceError(StoreStatus.CANNOT_UNDERSTAND_INVALID_UID, str(exc)) from exc


def check_header(
    dataset: Dataset,
    *,
    requested_class: str,
    requested_instance: str,
    file_size: int,
    strict_uids: bool = False,
    keywords: Iterable[str] = (),
) -> Header:
    """Validate UIDs and pixel data against the C-STORE request (PS3.4 B.2.3), read the facts."""
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
    wanted = dict.fromkeys((*FACT_KEYWORDS, *keywords))
    attributes = {keyword: _clean(_raw_text(dataset, keyword)) for keyword in wanted}
    return Header(study, sop_class, sop_instance, series_uid, attributes)
