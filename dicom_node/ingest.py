"""The store path of one instance: check, make durable, record, then hand off for queueing.

Success is answered only after the file is fsynced in place and the database row is committed.
Every failure leaves no partial file and maps to a named :class:`StoreStatus`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.instances import NewInstance, RecordOutcome, RecordResult, record_instance
from db.models import InstanceStatus
from dicom_node.filters import TriageRules
from dicom_node.header import Header, RejectedInstanceError, check_header, read_header
from dicom_node.status import StoreStatus
from dicom_node.storage import DiskFullError, InstanceStore, StoredFile, sha256_of

LOGGER = logging.getLogger(__name__)


class Ingestor:
    """Turns a received temporary file into a durable, recorded, queued instance."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        rules: TriageRules,
        on_recorded: Callable[[int], None],
        strict_uids: bool = False,
    ) -> None:
        self.strict_uids = strict_uids
        self.store = store
        self.sessions = sessions
        self.rules = rules
        self.on_recorded = on_recorded

    def ingest(
        self,
        received: Path,
        calling_ae: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> StoreStatus:
        """Store one instance; see :func:`dicom_node.handlers.handle_store` for statuses."""
        try:
            header, stored = self._make_durable(received, sop_class_uid, sop_instance_uid)
        except RejectedInstanceError as exc:
            LOGGER.warning("C-STORE from %s refused (0x%04X %s): %s",
                           calling_ae, exc.status, exc.status.name, exc)
            return exc.status
        except DiskFullError as exc:
            LOGGER.error("C-STORE from %s refused, storage full: %s", calling_ae, exc.strerror)
            return StoreStatus.OUT_OF_RESOURCES_DISK_FULL
        except OSError as exc:
            LOGGER.error("C-STORE from %s refused, storage error: %s", calling_ae, exc)
            return StoreStatus.OUT_OF_RESOURCES
        item = self._new_instance(header, stored, calling_ae, transfer_syntax_uid)
        try:
            with self.sessions.begin() as session:
                result = record_instance(session, item)
        except SQLAlchemyError as exc:
            self.store.discard(stored)
            LOGGER.error("study %s: C-STORE from %s refused, database unavailable: %s",
                         item.study.study_instance_uid, calling_ae, type(exc).__name__)
            return StoreStatus.OUT_OF_RESOURCES_DATABASE
        self._after_commit(item, result)
        return StoreStatus.SUCCESS

    def _make_durable(
        self, received: Path, sop_class_uid: str, sop_instance_uid: str
    ) -> tuple[Header, StoredFile]:
        size = received.stat().st_size
        self.store.check_space()
        dataset = read_header(received)
        header = check_header(
            dataset,
            requested_class=sop_class_uid,
            requested_instance=sop_instance_uid,
            file_size=size,
            strict_uids=self.strict_uids,
        )
        sha256 = sha256_of(received)
        final = self.store.final_path(
            header.study.study_instance_uid, header.series_instance_uid, header.sop_instance_uid,
            sha256,
        )
        return header, self.store.commit(received, final, sha256)

    def _new_instance(
        self, header: Header, stored: StoredFile, calling_ae: str, transfer_syntax_uid: str
    ) -> NewInstance:
        verdict = self.rules.evaluate(header.dataset)
        dataset = header.dataset
        return NewInstance(
            study=header.study,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            calling_ae=calling_ae.strip()[:16],
            file_path=str(stored.path),
            size_bytes=stored.size_bytes,
            transfer_syntax_uid=transfer_syntax_uid,
            content_sha256=stored.sha256,
            modality=_short(dataset.get("Modality"), 16),
            body_part_examined=_short(dataset.get("BodyPartExamined"), 64),
            view_position=_short(dataset.get("ViewPosition"), 16),
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
        self.on_recorded(result.instance_id)


def _short(value: object, limit: int) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:limit] or None
