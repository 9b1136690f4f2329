"""Inflating a received Deflated Explicit VR Little Endian dataset (PS3.5 §A.5), bounded.

pydicom inflates a deflated file whole, in memory, with no limit: a few hundred kilobytes can
become gigabytes. Here the stream is inflated 1 MiB at a time into a scratch file beside the
received one (the node's incoming folder), and refused as soon as it grows past a limit.
The scratch file is a plain Explicit VR Little Endian Part 10 file, so offsets read from it are
offsets in the inflated data, and values deferred by the reader stay on disk.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.errors import NodeError

# The largest CR/DX instances are tens of MiB uncompressed; 256 MiB leaves ample headroom while
# bounding both the scratch file and what a later reader of the stored file inflates in memory.
MAX_INFLATED_BYTES = 256 * 1024 * 1024
SCRATCH_SUFFIX = ".inflated"
_CHUNK = 1 << 20
_GROUP_LENGTH_ELEMENT = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, length 4
_META_START = 132  # 128-byte preamble + "DICM"


class InflateError(NodeError):
    """The deflated dataset is corrupt, truncated or inflates past the limit."""

    def __init__(self, reason: str, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


def dataset_offset(path: Path) -> int:
    """Where the dataset starts: after the preamble and the File Meta group (PS3.10 §7.1).

    The node's receiver (pynetdicom) always writes the group length, so it is required here.
    """
    with path.open("rb") as handle:
        head = handle.read(_META_START + 12)
    if (len(head) < _META_START + 12 or head[128:_META_START] != b"DICM"
            or head[_META_START:_META_START + 8] != _GROUP_LENGTH_ELEMENT):
        raise InflateError("the File Meta Information has no group length")
    return _META_START + 12 + int.from_bytes(head[_META_START + 8:], "little")


def inflate_stream(source: BinaryIO, target: BinaryIO, limit: int) -> int:
    """Inflate raw deflate data (no zlib header, PS3.5 §A.5) from ``source`` into ``target``.

    Returns the inflated size. Raises :class:`InflateError` when the stream is corrupt, ends
    early, or would inflate past ``limit`` bytes; never holds more than 1 MiB of output.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    try:
        while not inflater.eof and (chunk := source.read(_CHUNK)):
            data = inflater.decompress(chunk, _CHUNK)
            while data:
                written += len(data)
                if written > limit:
                    raise InflateError(
                        f"the deflated dataset inflates to more than {limit} bytes",
                        too_large=True)
                target.write(data)
                data = b"" if inflater.eof else inflater.decompress(
                    inflater.unconsumed_tail, _CHUNK)
    except zlib.error as exc:
        raise InflateError(f"the deflated dataset is corrupt ({exc})") from exc
    if not inflater.eof:
        raise InflateError("the deflated dataset is truncated")
    return written


@contextmanager
def inflated_copy(path: Path, limit: int) -> Iterator[Path]:
    """An Explicit VR Little Endian copy of a deflated Part 10 file, deleted on exit."""
    offset = dataset_offset(path)
    scratch = path.with_name(path.name + SCRATCH_SUFFIX)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        with path.open("rb") as source, scratch.open("wb") as target:
            target.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(DicomFileLike(target), meta, enforce_standard=False)
            source.seek(offset)
            inflate_stream(source, target, limit)
        yield scratch
    finally:
        scratch.unlink(missing_ok=True)
