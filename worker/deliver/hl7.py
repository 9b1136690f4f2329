"""HL7 v2 result notification to a RIS: ``hl7://`` destinations, MLLP sending, ACK rules.

What the delivery path calls (docs/hl7.md)::

    destination = parse_hl7_destination("hl7://ris.example.org:2575;tls;app=RIS")
    outcome = deliver_hl7(sessions, report_id, destination)   # build from the db, then send

``deliver_hl7`` builds the ORU^R01 of the report (``worker.deliver.hl7_message``), sends it
over MLLP (optionally TLS) and classifies the acknowledgement; it returns a ``DeliveryOutcome``
and never raises for network, peer or data problems. The delivery states, backoff and
``redeliver`` are the delivery path's, as for DICOM destinations.

Syntax of an entry in ``TRIAGE_DESTINATIONS``::

    hl7://HOST:PORT[;tls][;ca=PATH][;cert=PATH][;key=PATH][;shadow][;app=NAME][;facility=NAME]
                   [;timeout=SECONDS]

``app``/``facility`` are the receiving application and facility (MSH-5/MSH-6); ``timeout``
bounds the connection and the wait for the ACK (default 30 s). An IPv6 host is bracketed.

ACK rules (HL7 v2.5.1 2.9.2 and Table 0357; MSA-1, ERR-3, or MSA-6 / ERR-1.4 of older peers):

* ``sent``: AA or CA.
* ``retry``: an error code 206 (record locked) or 207 (internal error); without any error code,
  AR (rejected for reasons unrelated to the message, e.g. the system is down) or CE; and no ACK
  at all (refused, reset, dropped or timed out).
* ``failed``: any other error code (the message itself was wrong: resending can't help); without
  a code, AE or CR; an ACK for another control id; a reply that is not HL7; a TLS certificate
  that doesn't verify.

The peer's free text (MSA-3, ERR-8) is not recorded: it may quote patient data.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection

from db.models import DeliveryItem
from worker.deliver.cstore import DeliveryOutcome, OutcomeKind
from worker.deliver.destinations import (
    DestinationError,
    check_tls_files,
    parse_port,
    parse_seconds,
    split_options,
)
from worker.deliver.hl7_message import Hl7MessageError, oru_for_report
from worker.deliver.tls import client_context
from worker.errors import WorkerError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

SCHEME = "hl7://"
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 600.0
LABEL_LENGTH = 160  # delivery.destination
HD_LENGTH = 20  # HD.1 namespace id (v2.5.1)
ENCODING = "utf-8"  # MSH-18 "UNICODE UTF-8"
_SYNTAX_HINT = ("expected hl7://HOST:PORT[;tls][;ca=PATH][;cert=PATH][;key=PATH][;shadow]"
                "[;app=NAME][;facility=NAME][;timeout=SECONDS]")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]@;/]+):(?P<port>[^;/]*)$")
_FLAGS = frozenset({"tls", "shadow"})
_VALUES = frozenset({"ca", "cert", "key", "app", "facility", "timeout"})
_HL7_DELIMITERS = frozenset("|^~\\&")


class Hl7Error(WorkerError):
    """An HL7 message can't be sent as asked: no MSH-10, or unusable TLS material."""


class AckCode(enum.StrEnum):
    """MSA-1 acknowledgment codes (HL7 Table 0008)."""

    APPLICATION_ACCEPT = "AA"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"


class Hl7ErrorCode(enum.IntEnum):
    """Message error condition codes (HL7 Table 0357), in ERR-3 or MSA-6."""

    MESSAGE_ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


_ACCEPTED = frozenset({AckCode.APPLICATION_ACCEPT, AckCode.COMMIT_ACCEPT})
_TRANSIENT_ERRORS = frozenset({Hl7ErrorCode.APPLICATION_RECORD_LOCKED,
                               Hl7ErrorCode.APPLICATION_INTERNAL_ERROR})
_RETRY_WITHOUT_CODE = frozenset({AckCode.APPLICATION_REJECT, AckCode.COMMIT_ERROR})


@dataclass(frozen=True)
class Hl7Destination:
    """A RIS (or interface engine) that takes ORU^R01 results over MLLP.

    ``shadow`` destinations are recorded but nothing is sent to them.
    """

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    shadow: bool = False
    receiving_application: str = ""
    receiving_facility: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        where = f"HL7 destination {self.host}:{self.port}"
        if not self.host:
            raise DestinationError("HL7 destination has no host; " + _SYNTAX_HINT)
        if not 1 <= self.port <= 65535:
            raise DestinationError(f"{where}: port {self.port} not in 1-65535")
        check_tls_files(where, tls=self.tls, ca_file=self.ca_file, cert_file=self.cert_file,
                        key_file=self.key_file)
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise DestinationError(f"{where}: timeout must be in (0, {MAX_TIMEOUT_S:.0f}] s")
        for name, value in (("app", self.receiving_application),
                            ("facility", self.receiving_facility)):
            _check_hd(value, name, where)
        if len(self.label) > LABEL_LENGTH:
            raise DestinationError(f"{where}: the address is longer than {LABEL_LENGTH} chars")

    @property
    def label(self) -> str:
        """``hl7://host:port``, for logs and the delivery records."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{host}:{self.port}"

    @property
    def items(self) -> tuple[DeliveryItem, ...]:
        """What this destination is sent of each report: the ORU^R01 message."""
        return (DeliveryItem.HL7,)


def _check_hd(value: str, name: str, where: str) -> None:
    """An application or facility name: printable ASCII, no HL7 delimiter, 20 chars at most."""
    if len(value) > HD_LENGTH:
        raise DestinationError(f"{where}: {name}= is longer than {HD_LENGTH} characters")
    if any(ch in _HL7_DELIMITERS or not 0x20 <= ord(ch) <= 0x7E for ch in value):
        raise DestinationError(
            f"{where}: {name}={value!r} holds an HL7 delimiter (|^~\\&) or a non-printable "
            "character")


def is_hl7_entry(entry: str) -> bool:
    """Whether a ``TRIAGE_DESTINATIONS`` entry is an ``hl7://`` one."""
    return entry.strip().lower().startswith(SCHEME)


def parse_hl7_destination(entry: str) -> Hl7Destination:
    """Parse one ``hl7://host:port[;option...]`` entry; ``DestinationError`` if malformed."""
    entry = entry.strip()
    if not is_hl7_entry(entry):
        raise DestinationError(f"{entry!r} is not an hl7:// destination; {_SYNTAX_HINT}")
    address, *options = entry[len(SCHEME):].split(";")
    match = _ADDRESS.match(address.strip())
    if match is None:
        raise DestinationError(f"cannot parse HL7 destination {entry!r}; {_SYNTAX_HINT}")
    port = parse_port(match["port"].strip(), entry)
    flags, values = split_options(options, entry, flags=_FLAGS, values=_VALUES,
                                  hint=_SYNTAX_HINT)
    paths = {name: Path(values[name]) for name in ("ca", "cert", "key") if name in values}
    return Hl7Destination(
        match["host"].strip().strip("[]"), port, tls="tls" in flags,
        shadow="shadow" in flags, ca_file=paths.get("ca"), cert_file=paths.get("cert"),
        key_file=paths.get("key"), receiving_application=values.get("app", ""),
        receiving_facility=values.get("facility", ""),
        timeout_s=(parse_seconds(values["timeout"], entry) if "timeout" in values
                   else DEFAULT_TIMEOUT_S),
    )


# --- The acknowledgement ----------------------------------------------------------------------


def _value(message: hl7.Message, segment: str, index: int, field: int, component: int = 1,
           subcomponent: int = 1) -> str:
    """One leaf value, or ``""`` where the message doesn't have it (python-hl7 raises)."""
    try:
        return str(message.extract_field(segment, index, field, 1, component, subcomponent))
    except (KeyError, IndexError):
        return ""


def _count(message: hl7.Message, segment: str) -> int:
    try:
        return len(message.segments(segment))
    except KeyError:
        return 0


def _error_codes(ack: hl7.Message) -> list[int]:
    """Table 0357 codes in ERR-3 (v2.5), ERR-1.4 (v2.3/2.4) and MSA-6 (deprecated)."""
    texts = [_value(ack, "MSA", 1, 6)]
    for index in range(1, _count(ack, "ERR") + 1):
        texts += [_value(ack, "ERR", index, 3), _value(ack, "ERR", index, 1, 4)]
    codes = [int(text) for text in (t.strip() for t in texts) if text.isdigit()]
    return list(dict.fromkeys(code for code in codes if code != 0))


def _describe_codes(codes: list[int]) -> str:
    names = []
    for code in codes:
        try:
            names.append(f"{code} ({Hl7ErrorCode(code).name})")
        except ValueError:
            names.append(f"{code} (site-specific)")
    return ", ".join(names)


def classify_ack(ack: hl7.Message, control_id: str, label: str = "") -> DeliveryOutcome:
    """Sort an acknowledgement into sent, retry or failed (module docstring: ACK rules)."""
    peer = label or "the peer"
    if not _count(ack, "MSA"):
        return DeliveryOutcome(OutcomeKind.FAILED, f"{peer} replied without an MSA segment",
                               destination=label)
    code_text, acked_id = _value(ack, "MSA", 1, 1), _value(ack, "MSA", 1, 2)
    if acked_id != control_id:
        return DeliveryOutcome(
            OutcomeKind.FAILED,
            f"{peer} acknowledged control id {acked_id!r}, not {control_id!r}; check the RIS "
            "interface", destination=label)
    try:
        code = AckCode(code_text.strip().upper())
    except ValueError:
        return DeliveryOutcome(OutcomeKind.FAILED, f"{peer} replied MSA-1 {code_text!r}, not an "
                               "acknowledgment code of HL7 Table 0008", destination=label)
    errors = _error_codes(ack)
    reason = f"{peer} replied {code.value}" + (f" with {_describe_codes(errors)}" if errors
                                               else "")
    if code in _ACCEPTED:
        kind = OutcomeKind.SENT
    elif errors:
        transient = any(error in _TRANSIENT_ERRORS for error in errors)
        kind = OutcomeKind.RETRY if transient else OutcomeKind.FAILED
    else:
        kind = OutcomeKind.RETRY if code in _RETRY_WITHOUT_CODE else OutcomeKind.FAILED
    if kind is OutcomeKind.FAILED:
        reason += "; resending the same message can't help: see the RIS interface log"
    warning = reason if kind is OutcomeKind.SENT and errors else ""  # e.g. AA with ERR warnings
    return DeliveryOutcome(kind, reason, destination=label, warning=warning)


# --- MLLP -------------------------------------------------------------------------------------


def tls_context(destination: Hl7Destination) -> ssl.SSLContext | None:
    """Client TLS: verify the RIS (``ca=`` or the system CAs), optional client certificate."""
    if not destination.tls:
        return None
    try:
        context = client_context(destination.ca_file, destination.cert_file,
                                 destination.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise Hl7Error(f"cannot load TLS material for {destination.label}: {exc}; check ca=, "
                       "cert=, key=") from exc
    return context


async def _exchange(text: str, destination: Hl7Destination,
                    context: ssl.SSLContext | None) -> bytes:
    """Send one MLLP block and read the reply block (MLLP release 2 framing, python-hl7)."""
    async with asyncio.timeout(destination.timeout_s):
        reader, writer = await open_hl7_connection(
            destination.host, destination.port, encoding=ENCODING, ssl=context,
            server_hostname=destination.host if context else None)
    try:
        writer.writeblock(text.encode(ENCODING))
        async with asyncio.timeout(destination.timeout_s):
            await writer.drain()
            block: bytes = await reader.readblock()
        return block
    finally:
        writer.close()
        try:
            async with asyncio.timeout(destination.timeout_s):
                await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass  # the reply is in; a dirty close changes nothing


def _network_outcome(exc: BaseException, label: str) -> DeliveryOutcome:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryOutcome(OutcomeKind.FAILED, f"the TLS certificate of {label} does not "
                               f"verify ({exc.verify_message}); check ca= and the host name",
                               destination=label)
    if isinstance(exc, TimeoutError):
        what = "no connection or no ACK within the timeout"
    elif isinstance(exc, asyncio.IncompleteReadError):
        what = "the connection closed before a complete ACK"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return DeliveryOutcome(OutcomeKind.RETRY, f"no ACK from {label}: {what}", destination=label)


def _not_hl7(label: str, exc: Exception) -> DeliveryOutcome:
    return DeliveryOutcome(OutcomeKind.FAILED, f"{label} replied with something that is not an "
                           f"HL7 ACK in MLLP framing ({type(exc).__name__}); is it an MLLP port?",
                           destination=label)


def _parse_outgoing(message: bytes | str) -> tuple[str, str]:
    """The message as text (segments ended by CR) and its control id (MSH-10)."""
    try:
        text = message.decode(ENCODING) if isinstance(message, bytes) else message
        text = text.replace("\r\n", "\r").replace("\n", "\r")
        control_id = str(hl7.parse(text).extract_field("MSH", 1, 10, 1, 1))
    except (hl7.HL7Exception, KeyError, IndexError, ValueError) as exc:
        raise Hl7Error(f"the message to send is not HL7 v2 with an MSH segment: {exc}") from exc
    if not control_id:
        raise Hl7Error("the message to send has no control id (MSH-10)")
    return text, control_id


def _shadow(destination: Hl7Destination) -> DeliveryOutcome:
    logger.info("%s: shadow destination, HL7 message not sent", destination.label)
    return DeliveryOutcome(OutcomeKind.SHADOW, "shadow destination: recorded, not sent",
                           destination=destination.label)


def send_hl7(message: bytes | str, destination: Hl7Destination) -> DeliveryOutcome:
    """Send one HL7 v2 message over MLLP and classify the ACK (module docstring: ACK rules).

    One connection per message. Never raises for network or peer problems: they come back as
    ``retry`` or ``failed``. Raises ``Hl7Error`` if ``message`` has no MSH-10, or the TLS
    material can't be loaded.
    """
    label = destination.label
    if destination.shadow:
        return _shadow(destination)
    text, control_id = _parse_outgoing(message)
    context = tls_context(destination)
    try:
        block = asyncio.run(_exchange(text, destination, context))
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        outcome = _network_outcome(exc, label)  # ssl.SSLError is an OSError
    except (InvalidBlockError, ValueError) as exc:  # no VT start, or a block over 64 KiB
        outcome = _not_hl7(label, exc)
    else:
        try:
            ack = hl7.parse(block.decode(ENCODING, errors="replace"))
        except (hl7.HL7Exception, ValueError, IndexError) as exc:
            outcome = _not_hl7(label, exc)
        else:
            outcome = classify_ack(ack, control_id, label)
    logger.info("%s: HL7 message %s -> %s (%s)", label, control_id, outcome.kind.value,
                outcome.reason)
    return outcome


def deliver_hl7(sessions: sessionmaker[Session], report_id: int, destination: Hl7Destination,
                *, sending_application: str = "CXR_TRIAGE",
                sending_facility: str = "") -> DeliveryOutcome:
    """Build the ORU^R01 of report ``report_id`` from the database and send it.

    A report that can't be expressed (no accession number or patient id) or unusable TLS
    material is ``failed`` with the reason; database errors propagate.
    """
    if destination.shadow:
        return _shadow(destination)
    try:
        with sessions() as session:
            message = oru_for_report(session, report_id, destination,
                                     sending_application=sending_application,
                                     sending_facility=sending_facility)
        return send_hl7(message, destination)
    except (Hl7Error, Hl7MessageError) as exc:
        logger.warning("report %d -> %s: %s", report_id, destination.label, exc)
        return DeliveryOutcome(OutcomeKind.FAILED, str(exc), destination=destination.label)
