"""The store path of one instance: check, make durable, record, then hand off for queueing.

Success is answered only after the file is fsynced in place and the database row is committed.
Everything read from the dataset, and the triage verdict, is settled before the commit. Every
failure, expected or not, maps to a named :class:`StoreStatus`, and leaves neither the received
temporary file nor a stored file that no row references.
"""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from common.metrics import instances_total
from db.instances import (
    NewInstance,
    RecordOutcome,
    RecordResult,
    file_referenced,
    record_instance,
)
from db.models import InstanceStatus
from dicom_node.deflate import MAX_INFLATED_BYTES
from dicom_node.filters import TriageRules, Verdict
from dicom_node.header import Header, RejectedInstanceError, StoreRequest, inspect
from dicom_node.status import StoreStatus
from dicom_node.storage import DiskFullError, InstanceStore, StoredFile, sha256_of

LOGGER = logging.getLogger(__name__)
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class _Checked:
    """An instance that passed every check, with its verdict and where it will live."""

    header: Header
    verdict: Verdict
    size_bytes: int
    sha256: str
    final: Path
    synced: Future[None]  # the received file's fsync, started before hashing


class Ingestor:
    """Turns a received temporary file into a durable, recorded, queued instance."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        rules: TriageRules,
        on_recorded: Callable[[int], None],
        strict_uids: bool = False,
        max_inflated_bytes: int = MAX_INFLATED_BYTES,
    ) -> None:
        self.strict_uids = strict_uids
        self.store = store
        self.sessions = sessions
        self.rules = rules
        self.on_recorded = on_recorded
        self.max_inflated_bytes = max_inflated_bytes

    def ingest(
        self,
        received: Path,
        calling_ae: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> StoreStatus:
        """Store one instance; see :func:`dicom_node.handlers.handle_store` for statuses.

        Never raises: an unexpected error is CANNOT_UNDERSTAND_UNEXPECTED (OUT_OF_RESOURCES for
        MemoryError), and the received file is deleted whatever happened.
        """
        request = StoreRequest(sop_class_uid, sop_instance_uid, transfer_syntax_uid)
        try:
            status = self._ingest(received, calling_ae, request)
        except Exception as exc:  # the last guard: an exception here would answer 0xC211
            status = _unexpected(exc, calling_ae)
        finally:
            _remove_received(received)
        _count(status)
        return status

    def _ingest(self, received: Path, calling_ae: str, request: StoreRequest) -> StoreStatus:
        try:
            checked = self._check(received, request)
        except RejectedInstanceError as exc:
            LOGGER.warning("C-STORE from %s refused (0x%04X %s): %s",
                           calling_ae, exc.status, exc.status.name, exc)
            return exc.status
        except OSError as exc:
            return _storage_failure(exc, calling_ae)
        item = self._new_instance(checked, calling_ae, request.transfer_syntax_uid)
        with self.store.lock(checked.header.sop_instance_uid):
            try:
                stored = self.store.commit(received, checked.final, checked.sha256,
                                           checked.synced)
            except OSError as exc:
                return _storage_failure(exc, calling_ae)
            result = self._record(item, stored, calling_ae)
            if isinstance(result, StoreStatus):
                return result
            try:
                self._tidy(stored, result)
            except OSError as exc:  # committed: answer Success; only disk space is at stake
                LOGGER.error("instance %d: can't remove an unreferenced file: %s",
                             result.instance_id, exc.strerror)
        self._after_commit(item, result)
        return StoreStatus.SUCCESS

    def _check(self, received: Path, request: StoreRequest) -> _Checked:
        """Every check and every read of the dataset, before anything is committed."""
        size = received.stat().st_size
        self.store.check_space(size)
        # an inflated copy of a deflated dataset must not cross TRIAGE_MIN_FREE_BYTES either
        limit = max(0, min(self.max_inflated_bytes, self.store.room() - size))
        try:
            header = inspect(received, request, keywords=self.rules.keywords,
                             strict_uids=self.strict_uids, max_inflated=limit)
        except RejectedInstanceError as exc:
            if exc.status is StoreStatus.CANNOT_UNDERSTAND_TOO_LARGE and (
                    limit < self.max_inflated_bytes):
                raise DiskFullError(errno.ENOSPC, "no room to inflate the deflated dataset "
                                    "above TRIAGE_MIN_FREE_BYTES") from exc
            raise
        verdict = self.rules.evaluate(header.attributes)
        synced = self.store.sync_soon(received)  # the file's fsync runs while it is hashed
        sha256 = sha256_of(received)
        final = self.store.final_path(
            header.study.study_instance_uid, header.series_instance_uid, header.sop_instance_uid,
            sha256,
        )
        return _Checked(header, verdict, size, sha256, final, synced)

    def _record(self, item: NewInstance, stored: StoredFile,
                calling_ae: str) -> RecordResult | StoreStatus:
        """Commit the row; on failure undo the file unless a committed row references it."""
        try:
            with self.sessions.begin() as session:
                return record_instance(session, item)
        except Exception as exc:
            self._discard(stored)
            if not isinstance(exc, SQLAlchemyError) or isinstance(exc, DataError):
                raise  # not the database being unavailable: resending won't help
            LOGGER.error("study %s: C-STORE from %s refused, database unavailable: %s",
                         item.study.study_instance_uid, calling_ae, type(exc).__name__)
            return StoreStatus.OUT_OF_RESOURCES_DATABASE

    def _discard(self, stored: StoredFile) -> None:
        if stored.existed:
            return  # it was there before this association: a committed row may reference it
        try:
            with self.sessions.begin() as session:
                # the commit may have failed after the database applied it
                if file_referenced(session, str(stored.path)):
                    return
        except SQLAlchemyError:
            pass  # unknown: the sender was told to resend, which stores the file again
        self.store.discard(stored)

    def _tidy(self, stored: StoredFile, result: RecordResult) -> None:
        """After the commit: drop what no row references any more (the lock is held)."""
        if result.outcome is RecordOutcome.DUPLICATE:
            if result.file_path != str(stored.path) and not stored.existed:
                self.store.remove(stored.path)  # the row keeps the file it already had
            return
        previous = result.previous_file_path
        if previous and previous != str(stored.path) and not self.store.remove(Path(previous)):
            LOGGER.warning("instance %d: replaced file is outside the storage tree; kept",
                           result.instance_id)

    def _new_instance(self, checked: _Checked, calling_ae: str,
                      transfer_syntax_uid: str) -> NewInstance:
        header, verdict = checked.header, checked.verdict
        return NewInstance(
            study=header.study,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            calling_ae=calling_ae.strip()[:16],
            file_path=str(checked.final),
            size_bytes=checked.size_bytes,
            transfer_syntax_uid=transfer_syntax_uid,
            content_sha256=checked.sha256,
            modality=_short(header.attributes.get("Modality"), 16),
            body_part_examined=_short(header.attributes.get("BodyPartExamined"), 64),
            view_position=_short(header.attributes.get("ViewPosition"), 16),
            status=InstanceStatus.RECEIVED if verdict.candidate else InstanceStatus.SKIPPED,
            status_reason=None if verdict.candidate else (verdict.reason or "")[:255],
        )

    def _after_commit(self, item: NewInstance, result: RecordResult) -> None:
        study = item.study.study_instance_uid
        if result.outcome is RecordOutcome.DUPLICATE:
            LOGGER.info("study %s: instance %d re-sent with identical content", study,
                        result.instance_id)
            return
        if result.outcome is RecordOutcome.CHANGED:
            LOGGER.warning("study %s: instance %d re-sent with different content; re-queued",
                           study, result.instance_id)
        if result.status is InstanceStatus.SKIPPED:
            LOGGER.info("study %s: instance %d stored, skipped: %s", study, result.instance_id,
                        item.status_reason)
            return
        LOGGER.info("study %s: instance %d stored", study, result.instance_id)
        try:
            self.on_recorded(result.instance_id)
        except Exception as exc:  # the row is committed: the sweeper publishes it later
            LOGGER.error("instance %d: hand-off for queueing failed (%s); the sweeper will "
                         "publish it", result.instance_id, type(exc).__name__)


_FAILED = frozenset({StoreStatus.OUT_OF_RESOURCES, StoreStatus.OUT_OF_RESOURCES_DISK_FULL,
                     StoreStatus.OUT_OF_RESOURCES_DATABASE,
                     StoreStatus.CANNOT_UNDERSTAND_UNEXPECTED})


def _count(status: StoreStatus) -> None:
    """The ``triage_instances_total`` counter: received, refused (the sender's fault) or
    failed (ours), with the status name as the reason."""
    outcome = ("received" if status == StoreStatus.SUCCESS
               else "failed" if status in _FAILED else "refused")
    instances_total().labels(outcome, status.name.lower()).inc()


def _storage_failure(exc: OSError, calling_ae: str) -> StoreStatus:
    if isinstance(exc, DiskFullError) or exc.errno in _SPACE_ERRORS:
        LOGGER.error("C-STORE from %s refused, storage full: %s", calling_ae, exc.strerror)
        return StoreStatus.OUT_OF_RESOURCES_DISK_FULL
    LOGGER.error("C-STORE from %s refused, storage error: %s (%s)", calling_ae,
                 type(exc).__name__, exc.strerror)
    return StoreStatus.OUT_OF_RESOURCES


def _unexpected(exc: Exception, calling_ae: str) -> StoreStatus:
    """Name an unexpected failure. Only the type and the code location are logged: the
    message of an exception raised on malformed input may quote patient data."""
    status = (StoreStatus.OUT_OF_RESOURCES if isinstance(exc, MemoryError)
              else StoreStatus.CANNOT_UNDERSTAND_UNEXPECTED)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    LOGGER.error("C-STORE from %s refused (0x%04X %s): unexpected %s at %s",
                 calling_ae, status, status.name, type(exc).__name__, where)
    return status


def _remove_received(received: Path) -> None:
    """The received file holds patient data: it goes, whatever happened (moved on success)."""
    try:
        received.unlink(missing_ok=True)
    except OSError as exc:
        LOGGER.error("can't remove a received temporary file: %s", exc.strerror)


def _short(value: str | None, limit: int) -> str | None:
    text = (value or "").strip()
    return text[:limit] or None
