"""Durable storage of received instances: fsync the file, rename it into place, fsync the directory.

Layout: ``<storage>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>-<sha256[:12]>.dcm``. The hash suffix
means a resend with different content never overwrites a file that was already acknowledged.
Incoming data lands in ``<storage>/.incoming`` (same file system, so the move is a rename).

Every file of one SOP Instance UID lives at a path named after it, so :meth:`InstanceStore.lock`
on that UID serialises everything that creates or removes such a file: committing a resend,
undoing it when the database fails, and removing the file a changed resend replaced.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.durable import fsync_path
from dicom_node.uids import require_uid

LOGGER = logging.getLogger(__name__)
INCOMING_DIR_NAME = ".incoming"
_CHUNK = 1 << 20
SYNC_THREADS = 4  # fsyncs under way at once (each waits for the disk, not for a core)


class DiskFullError(OSError):
    """Free space is below the configured minimum, or the file system said ENOSPC."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_space_error(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class StoredFile:
    """A file that is durable at ``path``; ``existed`` if identical bytes were already there."""

    path: Path
    size_bytes: int
    sha256: str
    existed: bool


class InstanceStore:
    """The storage tree. Safe to use from many association threads."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root
        self.incoming = root / INCOMING_DIR_NAME
        self.min_free_bytes = min_free_bytes
        self._locks = _KeyedLocks()
        self._syncer = ThreadPoolExecutor(max_workers=SYNC_THREADS,
                                          thread_name_prefix="fsync")

    def sync_soon(self, path: Path) -> Future[None]:
        """Start fsyncing ``path`` on another thread; hand the future to :meth:`commit`.

        The fsync waits for the disk with the GIL released, so the C-STORE handler hashes the
        file meanwhile instead of after (docs/benchmarks.md, ingest).
        """
        return self._syncer.submit(fsync_path, path)

    def close(self) -> None:
        """Let the fsync threads end once their work is done."""
        self._syncer.shutdown(wait=False)

    def lock(self, sop_instance_uid: str) -> AbstractContextManager[None]:
        """Hold while creating, recording or removing the files of one SOP Instance UID."""
        return self._locks.hold(sop_instance_uid)

    def prepare(self) -> None:
        """Create the tree and drop leftovers of an earlier crash (never acknowledged)."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.iterdir():
            LOGGER.info("removing unacknowledged partial file %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def room(self) -> int:
        """Bytes that may still be written before free space crosses the floor."""
        return self.free_bytes() - self.min_free_bytes

    def check_space(self, needed: int = 0) -> None:
        """Raise :class:`DiskFullError` when storing ``needed`` more bytes would cross the floor.

        ``needed`` is the size of the incoming file: its temporary copy already counts as used,
        but a copy into place (another file system) needs the same again.
        """
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise DiskFullError(
                errno.ENOSPC,
                f"storage has {free} bytes free, below the minimum of {self.min_free_bytes} "
                f"(TRIAGE_MIN_FREE_BYTES) after {needed} more",
            )

    def final_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> Path:
        """Where an instance lives; every UID is validated before it touches the path."""
        study = require_uid(study_uid, "StudyInstanceUID")
        series = require_uid(series_uid, "SeriesInstanceUID")
        sop = require_uid(sop_uid, "SOPInstanceUID")
        return self.root / study / series / f"{sop}-{sha256[:12]}.dcm"

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and fsync each parent whose entries changed."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            fsync_path(path.parent, directory=True)

    def commit(self, source: Path, final: Path, sha256: str,
               synced: Future[None] | None = None) -> StoredFile:
        """Make ``source`` durable at ``final`` (rename when possible, else copy).

        ``synced`` is the fsync of ``source`` already under way (:meth:`sync_soon`); it is
        waited for before the rename, and without it ``source`` is fsynced here. Raises
        :class:`DiskFullError` on ENOSPC/EDQUOT, ``OSError`` otherwise; nothing partial is
        left at ``final`` either way.
        """
        size = source.stat().st_size
        existed = final.exists()
        placed = False
        try:
            self._make_dirs(final.parent)
            if synced is None:
                fsync_path(source)
            else:
                synced.result()  # re-raises the fsync's OSError
            try:
                os.replace(source, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_into_place(source, final)
            placed = True
            fsync_path(final.parent, directory=True)
        except OSError as exc:
            if placed and not existed:
                final.unlink(missing_ok=True)  # not durable, and no row will reference it
            if _is_space_error(exc):
                raise DiskFullError(exc.errno, f"storage is full: {exc.strerror}") from exc
            raise
        return StoredFile(path=final, size_bytes=size, sha256=sha256, existed=existed)

    def _copy_into_place(self, source: Path, final: Path) -> None:
        partial = self.incoming / (final.name + ".copy")
        try:
            with source.open("rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    def discard(self, stored: StoredFile) -> None:
        """Undo :meth:`commit` when the database could not record the instance.

        A file that was already there stays: a committed row may reference it. Call while
        holding :meth:`lock` for the instance, so no other association recorded it meanwhile.
        """
        if not stored.existed:
            self.remove(stored.path)

    def remove(self, path: Path) -> bool:
        """Delete a stored file no row references any more; ``False`` if it is not in the tree."""
        if not path.is_relative_to(self.root) or path.is_relative_to(self.incoming):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return True
        fsync_path(path.parent, directory=True)
        return True


class _KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
