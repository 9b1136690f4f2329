"""A seeded corpus of malformed C-STORE datasets made from real files, and a raw sender for it.

Each mutant is a Part 10 file whose File Meta is valid (so it can be sent) and whose dataset
bytes are broken in one way: bytes flipped, cut short, an element's length or value or VR
corrupted, elements swapped, values far over 4096 bytes, required attributes missing or
undecodable, a deflated stream corrupted, identical and changed resends. The sender passes the
bytes after the File Meta on unchanged (pynetdicom's chunked send), many files per association.
"""

from __future__ import annotations

import copy
import csv
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config

ACCEPTED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (node started to accept it)
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_PIXEL_TAG = 0x7FE00010
_UID_ROOT = "1.2.826.0.1.3680043.10.543."  # test UIDs: never clinical ones


@dataclass(frozen=True)
class Source:
    """A shared file, decoded once: its dataset and the transfer syntax it came in."""

    name: str
    dataset: Dataset
    transfer_syntax: UID


@dataclass(frozen=True)
class Mutant:
    """One file of the corpus and how it was made."""

    path: Path
    kind: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def load_sources(shared_dicom: Path) -> list[Source]:
    """Every shared file of a SOP class the fuzzed node accepts (see its manifest)."""
    with (shared_dicom / "manifest.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["sop_class_uid"] in ACCEPTED_CLASSES]
    sources = []
    for row in rows:
        dataset = dcmread(shared_dicom / row["file"], force=True)
        syntax = dataset.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
        sources.append(Source(row["file"], dataset, UID(str(syntax))))
    return sources


def encode(dataset: Dataset, syntax: UID) -> bytes:
    """The dataset bytes (no File Meta) in ``syntax``; deflated when ``syntax`` says so."""
    buffer = BytesIO()
    target = DicomFileLike(buffer)
    target.is_little_endian, target.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(target, dataset)
    if syntax != DeflatedExplicitVRLittleEndian:
        return buffer.getvalue()
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(buffer.getvalue()) + deflater.flush()


def write_part10(path: Path, sop_class: str, sop_instance: str, syntax: str, body: bytes) -> Path:
    """A preamble, a valid File Meta naming ``syntax``, then ``body`` as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(handle), meta, enforce_standard=True)
        handle.write(body)
    return path


@dataclass(frozen=True)
class _Span:
    """A top-level element in encoded bytes."""

    tag: int
    start: int  # first byte of the tag
    vr_at: int | None  # explicit VR: where the two VR characters are
    length_at: int
    length_size: int
    value_at: int
    length: int


def _spans(body: bytes, implicit: bool) -> list[_Span]:
    spans = []
    for element in data_element_generator(BytesIO(body), implicit, True, defer_size=0):
        vr = str(element.VR or "").encode()
        long_form = implicit or vr in _LONG_VRS
        header = 8 if implicit or not long_form else 12
        # sequences come back parsed, with the element's start; other values with theirs
        start = (element.value_tell - header if isinstance(element, RawDataElement)
                 else int(element.file_tell or 0))
        length_at = start + header - (4 if long_form else 2)
        size = 4 if long_form else 2
        length = int.from_bytes(body[length_at:length_at + size], "little")
        spans.append(_Span(
            tag=int(element.tag), start=start, vr_at=None if implicit else start + 4,
            length_at=length_at, length_size=size, value_at=start + header, length=length))
    return spans


class _Maker:
    """Applies one seeded mutation to a source; each method returns (kind, dataset, body)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def uid(self) -> str:
        return _UID_ROOT + ".".join(str(self.rng.randrange(1, 10**9)) for _ in range(3))

    def fresh(self, source: Source) -> Dataset:
        dataset = copy.deepcopy(source.dataset)
        dataset.SOPInstanceUID = self.uid()
        return dataset

    def bytes_of(self, source: Source, dataset: Dataset) -> tuple[bytes, list[_Span]]:
        body = encode(dataset, source.transfer_syntax)
        return body, _spans(body, source.transfer_syntax == ImplicitVRLittleEndian)

    def header_end(self, spans: list[_Span], body: bytes) -> int:
        return next((s.start for s in spans if s.tag == _PIXEL_TAG), len(body))

    def flip(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        data = bytearray(body)
        end = self.header_end(spans, body)
        for _ in range(self.rng.randint(1, 12)):
            at = self.rng.randrange(end if self.rng.random() < 0.85 else len(data))
            data[at] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncate(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        end = self.header_end(spans, body)
        cut = self.rng.randrange(1, end) if self.rng.random() < 0.5 else self.rng.randrange(
            end, len(body))
        return body[:cut]

    def length(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        span = self.rng.choice(spans)
        top = (1 << (8 * span.length_size)) - 1
        value = self.rng.choice([0, 1, span.length + 1, span.length * 3 + 7, top, top - 1,
                                 len(body), self.rng.randrange(top)]) & top
        fmt = "<I" if span.length_size == 4 else "<H"
        data = bytearray(body)
        data[span.length_at:span.length_at + span.length_size] = struct.pack(fmt, value)
        return bytes(data)

    def value(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        span = self.rng.choice([s for s in spans if s.tag != _PIXEL_TAG] or spans)
        size = min(span.length, 4096) if span.length != 0xFFFFFFFF else 16
        filler = self.rng.choice([b"\x00", b"\xff", b"\\", b"\x1b$B", b"\xc3\x28", b"9."])
        junk = (filler * size)[:size] if self.rng.random() < 0.5 else self.rng.randbytes(size)
        data = bytearray(body)
        data[span.value_at:span.value_at + len(junk)] = junk
        return bytes(data)

    def vr(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        explicit = [s for s in spans if s.vr_at is not None]
        if not explicit:
            return self.flip(source, dataset)
        span = self.rng.choice(explicit)
        vr = self.rng.choice([b"SQ", b"UN", b"OB", b"US", b"UL", b"FD", b"XX", b"\x00\x00",
                              b"DA", b"PN", b"UI", b"AT", b"OW", b"UT"])
        data = bytearray(body)
        assert span.vr_at is not None
        data[span.vr_at:span.vr_at + 2] = vr
        return bytes(data)

    def swap(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        at = self.rng.randrange(len(spans) - 1)
        first, second = spans[at], spans[at + 1]
        end = spans[at + 2].start if at + 2 < len(spans) else len(body)
        return (body[:first.start] + body[second.start:end] + body[first.start:second.start]
                + body[end:])

    def garbage(self, source: Source, dataset: Dataset) -> bytes:
        body, spans = self.bytes_of(source, dataset)
        junk = self.rng.randbytes(self.rng.randint(1, 3000))
        if self.rng.random() < 0.5:
            return body + junk
        at = self.rng.choice(spans).start  # inserted between two elements
        return body[:at] + junk + body[at:]


def _oversize(maker: _Maker, dataset: Dataset) -> str:
    """Values far over the 4096 bytes the reader loads eagerly, in attributes the node reads."""
    rng = maker.rng
    choice = rng.randrange(7)
    if choice == 0:
        dataset.PatientName = "A" * rng.randint(4097, 70000)
    elif choice == 1:
        dataset.StudyDescription = "STUDY " * rng.randint(700, 12000)
    elif choice == 2:
        dataset.Modality = "CR" + " " * rng.randint(4096, 9000)
    elif choice == 3:
        dataset.BodyPartExamined = "CHEST\\" * rng.randint(700, 3000)
    elif choice == 4:
        dataset.StudyInstanceUID = "1." + "2" * rng.randint(4100, 9000)
    elif choice == 5:
        dataset.add_new(0x00091010, "OB", rng.randbytes(rng.randint(1 << 20, 3 << 20)))
    else:
        dataset.AccessionNumber = "\x00" * rng.randint(4097, 9000)
    return f"oversize{choice}"


def _missing(maker: _Maker, dataset: Dataset) -> str:
    keyword = maker.rng.choice(["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                "SeriesInstanceUID", "PixelData", "Rows", "Columns", "Modality"])
    if keyword in dataset:
        delattr(dataset, keyword)
    return f"missing-{keyword}"


def _odd_values(maker: _Maker, dataset: Dataset) -> str:
    """Values that decode badly: wrong character sets, NULs, foreign UIDs, broken numbers."""
    rng = maker.rng
    choice = rng.randrange(6)
    if choice == 0:
        dataset.SpecificCharacterSet = rng.choice(["ISO 2022 IR 999", "ISO_IR 192", "\\\\"])
        dataset.PatientName = b"\xff\xfe\xc3\x28 \x00name".decode("latin-1")
    elif choice == 1:
        dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT: differs from the request
    elif choice == 2:
        dataset.SeriesInstanceUID = "../../" + maker.uid()
    elif choice == 3:
        dataset.PatientID = "ID\x00\x00with NULs"
        dataset.StudyDate = "2025\x001301"
    elif choice == 4:
        dataset.add_new(0x00280010, "US", rng.choice([0, 65535]))  # Rows
    else:
        dataset.ViewPosition = "\x1b$B\x1b(B" * rng.randint(1, 3000)
    return f"values{choice}"


def _deflated(maker: _Maker, source: Source, dataset: Dataset) -> tuple[str, bytes]:
    """A deflated copy (native pixels only), then often corrupted in its compressed form."""
    body = bytearray(encode(dataset, DeflatedExplicitVRLittleEndian))
    choice = maker.rng.randrange(4)
    if choice == 1:
        for _ in range(maker.rng.randint(1, 6)):
            body[maker.rng.randrange(len(body))] ^= 0xFF
    elif choice == 2:
        del body[maker.rng.randrange(1, len(body)):]
    elif choice == 3:
        body += maker.rng.randbytes(200)
    return f"deflate{choice}", bytes(body)


_BYTE_KINDS: dict[str, Callable[[_Maker, Source, Dataset], bytes]] = {
    "flip": _Maker.flip, "truncate": _Maker.truncate, "length": _Maker.length,
    "value": _Maker.value, "vr": _Maker.vr, "swap": _Maker.swap, "garbage": _Maker.garbage,
}


def _one(maker: _Maker, sources: Sequence[Source], index: int) -> tuple[str, Source, Dataset,
                                                                       str, bytes]:
    rng = maker.rng
    weights = [1.0 / max(1, len(s.dataset.PixelData) >> 18) for s in sources]  # favour small
    roll = rng.random()
    if 0.85 <= roll < 0.95:  # deflate needs native pixels
        sources = [s for s in sources if not s.transfer_syntax.is_compressed]
        weights = [1.0] * len(sources)
    source = rng.choices(sources, weights)[0]
    # half keep the source's own UID: resends of one instance, changed or identical
    dataset = maker.fresh(source) if rng.random() < 0.5 else copy.deepcopy(source.dataset)
    syntax = source.transfer_syntax
    if index % 25 == 0:
        return "control", source, dataset, syntax, encode(dataset, syntax)
    if roll < 0.55:
        kind = rng.choice(sorted(_BYTE_KINDS))
        return kind, source, dataset, syntax, _BYTE_KINDS[kind](maker, source, dataset)
    if roll < 0.85:
        kind = rng.choice([_oversize, _missing, _odd_values])(maker, dataset)
        return kind, source, dataset, syntax, encode(dataset, syntax)
    kind, body = _deflated(maker, source, dataset)
    return kind, source, dataset, DeflatedExplicitVRLittleEndian, body


def make_corpus(sources: Sequence[Source], directory: Path, count: int, seed: int) -> list[Mutant]:
    """``count`` files: mutants, an unmodified control every 25th, and 1 in 20 a resend of an
    earlier file. Reproducible from ``seed``."""
    rng = random.Random(seed)
    maker = _Maker(rng)
    directory.mkdir(parents=True, exist_ok=True)
    mutants: list[Mutant] = []
    for index in range(count):
        if mutants and index % 25 and rng.random() < 0.05:
            earlier = rng.choice(mutants)
            mutants.append(Mutant(earlier.path, "resend-" + earlier.kind, earlier.sop_class,
                                  earlier.sop_instance, earlier.transfer_syntax))
            continue
        kind, source, dataset, syntax, body = _one(maker, sources, index)
        sop_class = str(source.dataset.SOPClassUID)
        sop_instance = str(dataset.get("SOPInstanceUID", source.dataset.SOPInstanceUID))
        if len(sop_instance) > 64 or not sop_instance.replace(".", "").isdigit():
            sop_instance = maker.uid()
        path = write_part10(directory / f"{index:04d}-{kind}.dcm", sop_class, sop_instance,
                            syntax, body)
        mutants.append(Mutant(path, kind, sop_class, sop_instance, syntax))
    return mutants


def send_many(port: int, mutants: Sequence[Mutant], calling_ae: str = "STORESCU",
              called_ae: str = "CXR_TRIAGE") -> list[int | None]:
    """C-STORE each file's bytes unchanged, in order, over as few associations as possible.

    Returns each file's status, ``None`` where no response came (a new association follows).
    """
    ae = AE(ae_title=calling_ae)
    for sop_class, syntax in sorted({(m.sop_class, m.transfer_syntax) for m in mutants}):
        ae.add_requested_context(sop_class, syntax)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    statuses: list[int | None] = []
    assoc = None
    try:
        for mutant in mutants:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
            if not assoc.is_established:
                statuses.append(None)
                continue
            reply = assoc.send_c_store(mutant.path)
            statuses.append(int(reply.Status) if "Status" in reply else None)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc is not None and assoc.is_established:
            assoc.release()
    return statuses
