"""pynetdicom event handlers: association admission, C-ECHO and C-STORE.

Handlers adapt only: the work is in :mod:`dicom_node.ingest`. Dependencies come in as the third
element of the handler binding, so there are no globals.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import cast

from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.admission import Admission
from dicom_node.ingest import Ingestor
from dicom_node.negotiation import describe_proposal, log_refused_contexts, proposed_contexts
from dicom_node.status import StoreStatus

LOGGER = logging.getLogger(__name__)


def handle_requested(event: events.Event, admission: Admission) -> None:
    """EVT_REQUESTED: reject calling AEs that are not allowed (PS3.8 §7.1.1.9 diagnostic 3)."""
    request = event.assoc.requestor.primitive
    calling = request.calling_ae_title if request is not None else ""
    proposed = [abstract for abstract, _ in proposed_contexts(request).values()]
    refusal = admission.refusal(calling, str(event.assoc.requestor.address), proposed)
    if refusal is not None:
        LOGGER.warning("association from %s refused: %s; it proposed %s",
                       event.assoc.requestor.address, refusal, describe_proposal(request))
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        _let_reject_reach_peer(event)


def handle_accepted(event: events.Event) -> None:
    """EVT_ACCEPTED: log every presentation context refused in the accepted association."""
    requestor = event.assoc.requestor
    log_refused_contexts(requestor.ae_title, str(requestor.address), requestor.primitive,
                         event.assoc.rejected_contexts)


def _let_reject_reach_peer(event: events.Event, timeout_s: float = 1.0) -> None:
    # pynetdicom closes the socket as soon as this handler returns; give the DUL thread time to
    # write the A-ASSOCIATE-RJ first, as pynetdicom's own tests do.
    deadline = time.monotonic() + timeout_s
    while not event.assoc.dul.to_provider_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)


def handle_echo(event: events.Event) -> int:
    """EVT_C_ECHO: always Success (0x0000)."""
    LOGGER.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(StoreStatus.SUCCESS)


def handle_store(event: events.Event, ingestor: Ingestor) -> int:
    """EVT_C_STORE: store durably, record, queue. Never raises (that would answer 0xC211).

    Returns one of :class:`~dicom_node.status.StoreStatus`: SUCCESS, OUT_OF_RESOURCES,
    OUT_OF_RESOURCES_DISK_FULL, OUT_OF_RESOURCES_DATABASE, DATASET_DOES_NOT_MATCH_SOP_CLASS,
    CANNOT_UNDERSTAND, CANNOT_UNDERSTAND_INVALID_UID, CANNOT_UNDERSTAND_NO_PIXEL_DATA,
    CANNOT_UNDERSTAND_UID_MISMATCH, CANNOT_UNDERSTAND_TOO_LARGE or
    CANNOT_UNDERSTAND_UNEXPECTED.
    """
    try:
        request = cast(C_STORE, event.request)
        return int(
            ingestor.ingest(
                received=event.dataset_path,
                calling_ae=event.assoc.requestor.ae_title,
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                transfer_syntax_uid=str(event.context.transfer_syntax),
            )
        )
    except Exception as exc:  # ingest() never raises; this guards reading the event itself
        status = StoreStatus.CANNOT_UNDERSTAND_UNEXPECTED
        LOGGER.error("C-STORE refused (0x%04X %s): unexpected %s before ingest",
                     status, status.name, type(exc).__name__)
        _remove(getattr(event.request, "_dataset_path", None))
        return int(status)


def handle_released(event: events.Event) -> None:
    """EVT_RELEASED / EVT_ABORTED: log the end of an association, drop a partial dataset."""
    LOGGER.info("association with %s ended (%s)", event.assoc.requestor.ae_title, event.event.name)
    handle_closed(event)


def handle_closed(event: events.Event) -> None:
    """EVT_CONN_CLOSE (and the end of an association): delete a dataset cut off mid-transfer.

    pynetdicom creates the temporary file of a C-STORE when its command arrives and deletes it
    only after the handler ran; a transfer that never completes would leave patient data behind.
    """
    try:
        message = getattr(event.assoc.dimse, "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        partial.close()
        _remove(getattr(message, "_data_set_path", None))
        LOGGER.info("association with %s ended mid-transfer: partial dataset deleted",
                    event.assoc.requestor.ae_title)
    except Exception as exc:  # a handler must not raise; prepare() clears leftovers at start
        LOGGER.error("can't delete a partial dataset: %s", type(exc).__name__)


def _remove(path: object) -> None:
    if path is None:
        return
    try:
        Path(str(path)).unlink(missing_ok=True)
    except OSError as exc:
        LOGGER.error("can't remove a received temporary file: %s", exc.strerror)
