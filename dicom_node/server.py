"""Assembling and running the node: database, storage, queueing and the pynetdicom server."""

from __future__ import annotations

import logging
import tempfile
import threading
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages, evt
from sqlalchemy import Engine

from common.queues import make_celery
from db.migrate import require_current
from db.session import make_engine, make_session_factory
from dicom_node.admission import Admission, empty_allow_list_warning
from dicom_node.ae import build_ae
from dicom_node.commitment import handle_commitment_report, handle_commitment_request
from dicom_node.enqueue import Enqueuer, Publisher
from dicom_node.errors import NodeError
from dicom_node.filters import TriageRules
from dicom_node.handlers import (
    handle_accepted,
    handle_echo,
    handle_released,
    handle_requested,
    handle_store,
)
from dicom_node.ingest import Ingestor
from dicom_node.receive import receiving_files
from dicom_node.reconcile import CeleryDoorbell, Reconciler, ReconcileSettings
from dicom_node.settings import NodeSettings
from dicom_node.storage import InstanceStore
from dicom_node.tls import server_context
from dicom_node.transport import IntakeLimits, IntakeServer, start_intake_server

LOGGER = logging.getLogger(__name__)


def _quiet_libraries() -> None:
    # pynetdicom logs datasets (patient names) at DEBUG; keep it to warnings. pydicom's
    # reading validation would warn per element of every non-conformant header.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("kombu").setLevel(logging.ERROR)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class Node:
    """The running node. ``start()`` returns once the port is listening."""

    def __init__(self, settings: NodeSettings, publish: Publisher | None = None) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._server: IntakeServer | None = None
        self._store: InstanceStore | None = None
        self._publish = publish
        self.enqueuer: Enqueuer | None = None
        self.reconciler: Reconciler | None = None

    def start(self) -> None:
        settings = self.settings
        _quiet_libraries()
        store = self._store = InstanceStore(settings.storage_dir, settings.min_free_bytes)
        store.prepare()
        # pynetdicom writes each incoming dataset to a temporary file; keep it on the storage
        # file system so moving it into place is a rename, not a copy, and hash it and start
        # its write-back as it arrives (dicom_node.receive).
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(store.incoming)
        dimse_messages.NamedTemporaryFile = receiving_files(store.incoming)  # type: ignore[assignment]
        self._engine = make_engine(settings.db.url)
        require_current(self._engine)  # `cxr-triage db upgrade` migrates, not the node
        sessions = make_session_factory(self._engine)
        doorbell = CeleryDoorbell(make_celery(settings.broker))
        recovery = ReconcileSettings.for_node(settings)
        self.enqueuer = Enqueuer(self._publish or doorbell.score, sessions, recovery.lease_s)
        self.reconciler = Reconciler(doorbell, sessions, recovery, self.enqueuer.submit)
        rules = (TriageRules.from_file(settings.filter_file) if settings.filter_file
                 else TriageRules())
        ingestor = Ingestor(store, sessions, rules, self.enqueuer.submit, settings.strict_uids)
        admission = Admission(frozenset(settings.allowed_aets), settings.allow_any_aet,
                              settings.healthcheck_aet)
        nobody = empty_allow_list_warning(settings.allowed_aets, settings.allow_any_aet)
        if nobody:
            LOGGER.warning("node %s: %s", settings.ae_title, nobody)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, handle_requested, [admission]),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [ingestor]),
            (evt.EVT_N_EVENT_REPORT, handle_commitment_report, [sessions]),
            (evt.EVT_N_ACTION, handle_commitment_request),
            (evt.EVT_RELEASED, handle_released),
            (evt.EVT_ABORTED, handle_released),
        ]
        ae = build_ae(settings)
        try:
            self._server = start_intake_server(
                ae, (settings.host, settings.port), handlers, server_context(settings.tls),
                IntakeLimits.from_settings(settings),
            )
        except OSError as exc:
            raise NodeError(
                f"can't listen on {settings.host}:{settings.port}: {exc.strerror}; "
                "set TRIAGE_PORT or stop the other listener"
            ) from exc
        self.enqueuer.start()
        self.reconciler.start()  # the database drives recovery: docs/operations.md
        LOGGER.info(
            "node %s listening on %s:%d%s (storage %s)", settings.ae_title, settings.host,
            self.port, " with TLS" if settings.tls.enabled else "", settings.storage_dir,
        )

    @property
    def port(self) -> int:
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.enqueuer is not None:
            self.enqueuer.stop()
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            self._engine.dispose()

    def serve_forever(self) -> None:
        """Start, then block until interrupted."""
        self.start()
        stop = threading.Event()
        try:
            stop.wait()
        finally:
            self.stop()
