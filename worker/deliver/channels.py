"""Each destination kind sent its own way: the worker's ``Sender`` and Storage Commitment hook.

* ``AE@host:port`` (:class:`Destination`): C-STORE (``cstore.send_file``); after a successful
  C-STORE to a destination with ``;commit``, :func:`commitment_hook` asks for Storage
  Commitment (``commitment.request_commitment_for_file``).
* ``stow+https://...`` (:class:`StowDestination`): STOW-RS (``stow.send_stow``).
* ``hl7://...`` (``Hl7Destination``): the report's ORU^R01 over MLLP (``hl7.deliver_hl7``,
  which builds the message from the report and study rows).

Every channel answers with a ``DeliveryOutcome``; ``worker.deliver.delivery`` records it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db.models import DeliveryItem
from worker.deliver.cstore import DeliveryError, DeliveryOutcome, Timeouts, send_file
from worker.deliver.delivery import CommitHook, DeliveryKey, DeliveryOptions, Outgoing, Sender
from worker.deliver.destinations import Destination, StowDestination
from worker.deliver.stow import send_stow


def channel_sender(sessions: sessionmaker[Session], options: DeliveryOptions) -> Sender:
    """The sender the worker uses: C-STORE, STOW-RS or HL7 by the destination's kind."""
    timeouts = Timeouts.of(options.connect_timeout_s, options.timeout_s)

    def send(outgoing: Outgoing) -> DeliveryOutcome:
        destination = outgoing.destination
        if isinstance(destination, Destination):
            return send_file(outgoing.path, destination, calling_ae=options.calling_ae,
                             timeouts=timeouts)
        if isinstance(destination, StowDestination):
            return send_stow(outgoing.path, destination,
                             connect_timeout_s=options.connect_timeout_s,
                             timeout_s=options.timeout_s)
        from worker.deliver.hl7 import deliver_hl7  # HL7 needs its library only when used

        if outgoing.item is not DeliveryItem.HL7:
            raise DeliveryError(f"{destination.label} takes HL7 messages, not the "
                                f"{outgoing.item.value} item")
        return deliver_hl7(sessions, outgoing.report.id, destination,
                           sending_application=options.calling_ae)

    return send


def commitment_hook(sessions: sessionmaker[Session], options: DeliveryOptions) -> CommitHook:
    """Storage Commitment after a C-STORE to a ``;commit`` destination (PS3.4 J.3).

    Records the delivery's commitment ``requested`` and sends the N-ACTION; the answer is
    recorded as it comes (on this association within ``options.commitment_wait_s``, or later
    at the node).
    """
    timeouts = Timeouts.of(options.connect_timeout_s, options.timeout_s)

    def commit(key: DeliveryKey, outgoing: Outgoing) -> None:
        from worker.deliver.commitment import request_commitment_for_file

        destination = outgoing.destination
        assert isinstance(destination, Destination)  # delivery calls it for DICOM only
        request_commitment_for_file(
            sessions, key, destination, outgoing.path,
            calling_ae=options.calling_ae,
            timeout_s=options.commitment_wait_s, timeouts=timeouts)

    return commit
