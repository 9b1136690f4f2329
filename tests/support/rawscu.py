"""A pynetdicom SCU that sends a file's bytes as they are, for malformed-input tests.

storescu refuses to send what it can't parse; a broken modality doesn't, so this sends the
dataset bytes after the file meta unchanged (pynetdicom's chunked send).
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config


def write_raw(path: Path, sop_class: str, sop_instance: str, body: bytes) -> Path:
    """A file with a valid preamble and file meta followed by arbitrary dataset bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta, enforce_standard=True)  # type: ignore[arg-type]
        handle.write(body)
    return path


def send_raw(port: int, path: Path, sop_class: str, calling_ae: str = "STORESCU",
             called_ae: str = "CXR_TRIAGE") -> int | None:
    """C-STORE ``path`` without parsing it; the status, or ``None`` without a response."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not assoc.is_established:
            return None
        try:
            status: Dataset = assoc.send_c_store(path)
            return int(status.Status) if "Status" in status else None
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
