"""Deflated Explicit VR Little Endian (PS3.5 §A.5): real deflated images are stored, a deflate
bomb is refused with a named status while the node's memory stays bounded."""

from __future__ import annotations

import copy
import threading
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.deflate import MAX_INFLATED_BYTES
from dicom_node.status import StoreStatus
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.dicomfuzz import Mutant, send_many, write_part10
from tests.support.node import NodeProcess

MIB = 1024 * 1024
# the bomb inflates to 600 MiB; while it is refused, the node's RSS may grow by at most this
# much over its baseline (inflation is streamed 1 MiB at a time into a scratch file)
RSS_GROWTH_BOUND = 48 * MIB
# (chest CR, implicit VR, no File Meta), (chest CR, lossy JPEG 2000), (chest DX, JPEG 2000)
DEFLATED_SOURCES = ("fo-dicom_CR-MONO1-10-chest.dcm", "pylibjpeg-data_RG1_J2KI.dcm",
                    "pylibjpeg-data_966_fixed.dcm")


def _deflated_copy(source: Path, target: Path) -> tuple[Path, Dataset]:
    """``source`` with native pixels, saved as Deflated Explicit VR Little Endian."""
    dataset = dcmread(source, force=True)
    if dataset.file_meta.get("TransferSyntaxUID") is not None:
        dataset.decompress(generate_instance_uid=False)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset.save_as(target, enforce_file_format=True)
    return target, dataset


def test_real_deflated_images_are_stored(node: NodeProcess, shared_dicom: Path,
                                         tmp_path: Path) -> None:
    made = [_deflated_copy(shared_dicom / name, tmp_path / f"deflated-{name}")
            for name in DEFLATED_SOURCES]
    run = storescu(node.port, [path for path, _ in made])  # storescu -xd: proposes deflate
    rows = node.instances()
    for path, dataset in made:
        assert run.status_of(path) == StoreStatus.SUCCESS, run.output[-3000:]
        row = rows[str(dataset.SOPInstanceUID)]
        assert row[0] in ("received", "queued")  # chest CR/DX: a triage candidate
        stored = dcmread(Path(str(row[2])))
        assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        assert np.array_equal(stored.pixel_array, dataset.pixel_array)
    assert node.rows("SELECT DISTINCT transfer_syntax_uid FROM instance") == [
        (DeflatedExplicitVRLittleEndian,)]
    assert list((node.storage / ".incoming").iterdir()) == []


def _bomb(path: Path, inflated_mib: int) -> Mutant:
    """A valid small header, then Pixel Data of ``inflated_mib`` MiB of zeros, deflated."""
    dataset = dicomgen.radiograph(with_pixels=False)
    dataset.Rows, dataset.Columns = 4096, 4096
    buffer = BytesIO()
    target = DicomFileLike(buffer)
    target.is_little_endian, target.is_implicit_VR = True, False
    write_dataset(target, dataset)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mib * MIB
    parts = [deflater.compress(buffer.getvalue()),
             deflater.compress(b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little"))]
    zeros = bytes(MIB)
    parts += [deflater.compress(zeros) for _ in range(inflated_mib)]
    parts.append(deflater.flush())
    sop_class, sop = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
    write_part10(path, sop_class, sop, DeflatedExplicitVRLittleEndian, b"".join(parts))
    return Mutant(path, "bomb", sop_class, sop, DeflatedExplicitVRLittleEndian)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class _PeakRss(threading.Thread):
    """Samples a process's resident set size every 5 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            self.done.wait(0.005)


def test_deflate_bomb_refused_with_bounded_memory(node: NodeProcess, shared_dicom: Path,
                                                   tmp_path: Path) -> None:
    assert node.process is not None
    pid = node.process.pid
    warm, dataset = _deflated_copy(shared_dicom / DEFLATED_SOURCES[0], tmp_path / "warm.dcm")
    assert storescu(node.port, [warm]).status_of(warm) == StoreStatus.SUCCESS
    baseline = _rss(pid)
    bomb = _bomb(tmp_path / "bomb.dcm", inflated_mib=600)
    assert bomb.path.stat().st_size < MIB and 600 * MIB > MAX_INFLATED_BYTES

    sampler = _PeakRss(pid)
    sampler.start()
    statuses = send_many(node.port, [bomb, copy.copy(bomb)])
    sampler.done.set()
    sampler.join()

    assert statuses == [StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE] * 2
    growth = sampler.peak - baseline
    print(f"node RSS baseline {baseline / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB "
          f"while refusing a {bomb.path.stat().st_size // 1024} KiB deflate bomb")
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / MIB:.0f} MiB"
    assert list((node.storage / ".incoming").iterdir()) == []
    assert str(dataset.SOPInstanceUID) in node.instances() and len(node.instances()) == 1
    assert "0xC004 CANNOT_UNDERSTAND_TOO_LARGE" in node.log()
    assert storescu(node.port, [warm]).status_of(warm) == StoreStatus.SUCCESS
