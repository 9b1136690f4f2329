"""Deliver a DICOM file to a destination with C-STORE and classify the reply.

The reply is sorted into three outcomes the delivery task acts on (PS3.4
Annex B.2.3 statuses, PS3.7 Annex C general statuses, PS3.8 9.3.4 association
results):

* ``sent``: Success or Warning (the warning is kept with the outcome), or the peer already
  holds the instance.
* ``retry``: no association (connection refused, timeout, abort, transient
  rejection), no response, or a resource shortage (0xA7xx, 0x0213).
* ``failed``: permanent rejection, no acceptable presentation context, or an
  error status (0xA9xx, 0xCxxx, refused SOP class, ...); retrying won't help.

A ``shadow`` destination is never contacted: the outcome is ``shadow``. ``DeliveryOutcome``
and ``OutcomeKind`` are the result of every channel (C-STORE here, STOW-RS in ``stow.py``, HL7
in ``hl7.py``).
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from common.dicom_ids import IMPLEMENTATION_CLASS_UID, implementation_version_name
from worker.deliver.destinations import Destination, validate_ae_title
from worker.deliver.tls import client_context
from worker.errors import WorkerError

logger = logging.getLogger(__name__)


class DeliveryError(WorkerError):
    """The file to deliver or the TLS material for it can't be used."""


class OutcomeKind(enum.StrEnum):
    """What the delivery task does next."""

    SENT = "sent"  # done
    RETRY = "retry"  # try again later (with backoff)
    FAILED = "failed"  # needs a person: configuration or data problem
    SHADOW = "shadow"  # shadow destination: recorded, deliberately not sent


class StoreReplyStatus(enum.IntEnum):
    """Named C-STORE response statuses a peer may send (PS3.4 B.2.3, PS3.7 C.4)."""

    SUCCESS = 0x0000
    WARNING_ATTRIBUTE_LIST = 0x0107
    WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
    WARNING_ELEMENTS_DISCARDED = 0xB006
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    REFUSED_OUT_OF_RESOURCES = 0xA700  # any 0xA7xx
    ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # any 0xA9xx
    ERROR_CANNOT_UNDERSTAND = 0xC000  # any 0xCxxx


class AssociateResult(enum.IntEnum):
    """A-ASSOCIATE-RJ Result field (PS3.8 9.3.4)."""

    REJECTED_PERMANENT = 0x01
    REJECTED_TRANSIENT = 0x02


# Whole status classes, keyed by their high byte (PS3.4 B.2.3).
_CLASS_BY_HIGH_BYTE = {
    0xA7: StoreReplyStatus.REFUSED_OUT_OF_RESOURCES,
    0xA9: StoreReplyStatus.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    **{high: StoreReplyStatus.ERROR_CANNOT_UNDERSTAND for high in range(0xC0, 0xD0)},
}
_SENT = frozenset(
    {
        StoreReplyStatus.SUCCESS,
        StoreReplyStatus.WARNING_ATTRIBUTE_LIST,
        StoreReplyStatus.WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE,
        StoreReplyStatus.WARNING_COERCION_OF_DATA_ELEMENTS,
        StoreReplyStatus.WARNING_ELEMENTS_DISCARDED,
        StoreReplyStatus.WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        StoreReplyStatus.DUPLICATE_SOP_INSTANCE,  # the peer already holds it
    }
)
_RETRY = frozenset(
    {
        StoreReplyStatus.REFUSED_OUT_OF_RESOURCES,
        StoreReplyStatus.RESOURCE_LIMITATION,
        StoreReplyStatus.PROCESSING_FAILURE,  # a transient fault on the peer, bounded by retries
    }
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for TCP connect, A-ASSOCIATE, each DIMSE reply and the network."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0

    @classmethod
    def of(cls, connect_s: float, reply_s: float) -> Timeouts:
        """From ``TRIAGE_DELIVERY_CONNECT_TIMEOUT_S`` and ``TRIAGE_DELIVERY_TIMEOUT_S``: the
        association must be accepted within ``reply_s`` but at most 30 s."""
        return cls(connect=connect_s, acse=min(reply_s, 30.0), dimse=reply_s, network=reply_s)


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one delivery attempt ended, on any channel.

    ``warning``: for ``sent``, what the peer warned about (a C-STORE warning status, a STOW-RS
    202 with warnings or failures of other instances); recorded as the delivery's last error.
    """

    kind: OutcomeKind
    reason: str
    status: int | None = None  # the C-STORE status or the HTTP status, when a reply arrived
    destination: str = ""
    warning: str = ""

    @property
    def status_name(self) -> str | None:
        """The named status class of ``status``, e.g. ``REFUSED_OUT_OF_RESOURCES``."""
        named = named_status(self.status) if self.status is not None else None
        return None if named is None else named.name


def named_status(status: int) -> StoreReplyStatus | None:
    """The named status (or status class, for 0xA7xx/0xA9xx/0xCxxx), else ``None``."""
    try:
        return StoreReplyStatus(status)
    except ValueError:
        return _CLASS_BY_HIGH_BYTE.get(status >> 8)


def classify_status(status: int) -> OutcomeKind:
    """Map a C-STORE response status to an outcome (PS3.4 B.2.3, PS3.7 C.4)."""
    named = named_status(status)
    if named in _SENT or (named is None and (status >> 12) == 0xB):
        return OutcomeKind.SENT  # 0xBxxx: any warning
    if named in _RETRY:
        return OutcomeKind.RETRY
    return OutcomeKind.FAILED


def _describe(status: int) -> str:
    named = named_status(status)
    return f"0x{status:04X} ({'unknown status' if named is None else named.name})"


def scu_ae(calling_ae: str, timeouts: Timeouts) -> AE:
    """Our requesting AE: its title, implementation identity and the delivery timeouts."""
    ae = AE(ae_title=validate_ae_title(calling_ae))
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = implementation_version_name()
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def tls_args(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """Client TLS context (PS3.15 B.1/B.9): verify the peer, optional client certificate."""
    if not destination.tls:
        return None
    try:
        context = client_context(destination.ca_file, destination.cert_file,
                                 destination.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(
            f"cannot load TLS material for {destination.label}: {exc}; check ca=, cert=, key="
        ) from exc
    return context, destination.host


def association_outcome(assoc: Association, destination: Destination) -> DeliveryOutcome:
    """Why no association was established (PS3.8 7.1.1.9, 9.3.4)."""
    label = destination.label
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        why = f"{primitive.result_str}; source: {primitive.source_str}; {primitive.reason_str}"
        if primitive.result == AssociateResult.REJECTED_TRANSIENT:
            return DeliveryOutcome(OutcomeKind.RETRY, f"{label} rejected the association ({why})",
                                   destination=label)
        return DeliveryOutcome(
            OutcomeKind.FAILED,
            f"{label} rejected the association ({why}); check the called and calling AE titles",
            destination=label,
        )
    if primitive is not None and primitive.result == 0 and not assoc.accepted_contexts:
        return DeliveryOutcome(
            OutcomeKind.FAILED,
            f"{label} accepted none of the proposed presentation contexts; "
            "configure it to accept this storage SOP class",
            destination=label,
        )
    return DeliveryOutcome(
        OutcomeKind.RETRY,
        f"no association with {label}: connection refused, timed out or aborted",
        destination=label,
    )


def _reply_outcome(reply: Dataset, destination: Destination) -> DeliveryOutcome:
    """Classify the C-STORE-RSP (PS3.7 9.1.1.1.9)."""
    label = destination.label
    if "Status" not in reply:
        return DeliveryOutcome(
            OutcomeKind.RETRY, f"no C-STORE response from {label} (timeout or abort)",
            destination=label,
        )
    status = int(reply.Status)
    kind = classify_status(status)
    reason = f"{label} replied {_describe(status)}"
    comment = reply.get("ErrorComment")
    if comment:
        reason += f": {comment}"
    warning = reason if kind is OutcomeKind.SENT and status != StoreReplyStatus.SUCCESS else ""
    return DeliveryOutcome(kind, reason, status=status, destination=label, warning=warning)


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise DeliveryError(f"cannot read {path} for delivery: {exc}") from exc


def send_file(
    path: Path,
    destination: Destination,
    *,
    calling_ae: str,
    timeouts: Timeouts = Timeouts(),
) -> DeliveryOutcome:
    """C-STORE one DICOM file to ``destination`` and classify the result (PS3.4 B.2).

    Proposes the file's SOP class with its own transfer syntax, Explicit and
    Implicit VR Little Endian. Never raises for network or peer problems: they
    come back as ``retry`` or ``failed`` outcomes. Raises ``DeliveryError``
    when the file or the TLS material can't be read, ``DestinationError`` for a
    bad calling AE title.
    """
    if destination.shadow:
        logger.info("%s: shadow destination, %s not sent", destination.label, Path(path).name)
        return DeliveryOutcome(OutcomeKind.SHADOW, "shadow destination: recorded, not sent",
                               destination=destination.label)
    ds = _read(Path(path))
    ae = scu_ae(calling_ae, timeouts)
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    file_meta = getattr(ds, "file_meta", None)
    file_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if file_syntax and file_syntax not in syntaxes:
        syntaxes.insert(0, file_syntax)
    ae.add_requested_context(ds.SOPClassUID, syntaxes)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls_args(destination))
    if not assoc.is_established:
        outcome = association_outcome(assoc, destination)
    else:
        try:
            outcome = _reply_outcome(assoc.send_c_store(ds), destination)
        except (ValueError, RuntimeError) as exc:  # no context fits this dataset's syntax
            outcome = DeliveryOutcome(OutcomeKind.FAILED, f"cannot send to {destination.label}: "
                                      f"{exc}", destination=destination.label)
        finally:
            if assoc.is_established:
                assoc.release()
    logger.info("%s: C-STORE of SOP Instance %s -> %s (%s)", destination.label,
                ds.SOPInstanceUID, outcome.kind.value, outcome.reason)
    return outcome
