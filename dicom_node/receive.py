"""The file an incoming dataset is written to, written back to disk as it arrives.

pynetdicom writes each received C-STORE dataset to a temporary file, fragment by fragment
(``STORE_RECV_CHUNKED_DATASET``), through ``dimse_messages.NamedTemporaryFile``. The node
replaces that factory with :func:`receiving_files`, whose :class:`ReceivingFile` writes each
fragment straight to the file (no Python buffer, no flush per fragment) and asks the kernel to
start writing every ``WRITEBACK_BYTES`` to disk as soon as they are in
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux). That call waits for nothing; durability
still comes from the fsync before Success (:meth:`dicom_node.storage.InstanceStore.commit`),
which then has only the tail left to write (docs/benchmarks.md, ingest).

Hashing the fragments as they arrive was tried and measured slower: the receiving thread gives
up the GIL for every fragment it hashes and waits to get it back. The handler hashes the file
while its fsync runs instead (:meth:`dicom_node.storage.InstanceStore.sync_soon`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

WRITEBACK_BYTES = 1 << 20
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start write-out of dirty pages, don't wait


@cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or ``None`` where there is none (not Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``length`` bytes at ``offset`` to disk without waiting; ``False`` when
    the system can't (the final fsync then does all the work)."""
    function = _sync_file_range()
    return function is not None and function(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0


class ReceivingFile:
    """What pynetdicom needs of its ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush`` and ``close``."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=directory)
        self.name = name
        self._raw = os.fdopen(fd, "wb", buffering=0)
        self.size = 0
        self._written_back = 0  # bytes handed to start_writeback
        self._writeback = True

    @property
    def file(self) -> ReceivingFile:
        """pynetdicom calls ``file.flush()`` after each fragment; writes are unbuffered."""
        return self

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        while view:  # a raw write may be partial
            done = self._raw.write(view)
            view = view[done or 0:]
        self.size += len(data)
        if self._writeback and self.size - self._written_back >= WRITEBACK_BYTES:
            length = self.size - self._written_back
            self._writeback = start_writeback(self._raw.fileno(), self._written_back, length)
            self._written_back = self.size
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: every write went to the file."""

    def close(self) -> None:
        self._raw.close()


def receiving_files(directory: Path) -> Callable[..., ReceivingFile]:
    """A stand-in for ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` that
    creates :class:`ReceivingFile` objects in ``directory``."""
    def make(*_args: Any, **_kwargs: Any) -> ReceivingFile:
        return ReceivingFile(directory)
    return make
