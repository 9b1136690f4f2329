"""Intake that can't be starved: pynetdicom's server with bounded reads before the AE check.

pynetdicom 3 wraps TLS in its accept loop without a timeout, leaves accepted sockets blocking
and reads whatever PDU length a peer declares. Here, per connection and off the accept loop:
the TLS handshake and the whole first PDU (an A-ASSOCIATE-RQ of at most 64 KiB) must arrive
within ``first_pdu_timeout_s`` of the accept, or the connection is closed before an
:class:`~pynetdicom.association.Association` (and one of its slots) exists. Later PDUs are
capped at the negotiated maximum (PS3.8 Annex D.1) before their body is read, and every read
has a deadline. A source address may hold at most ``max_per_host`` connections.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.errors import NodeError
from dicom_node.settings import NodeSettings

LOGGER = logging.getLogger(__name__)

PDU_HEADER_LENGTH = 6  # PDU type, reserved, 32-bit length (PS3.8 9.3.1)
MAX_ASSOCIATE_RQ_LENGTH = 64 * 1024
UNLIMITED_PDU_CAP = 16 * 1024 * 1024  # TRIAGE_MAX_PDU=0 means "no limit" to pynetdicom


class PduType(enum.IntEnum):
    """PDU types (PS3.8 Table 9-1)."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


class AbortReason(enum.IntEnum):
    """A-ABORT reason/diagnostic when the service provider aborts (PS3.8 Table 9-26)."""

    UNEXPECTED_PDU = 0x02
    INVALID_PDU_PARAMETER_VALUE = 0x06


_KNOWN_PDU_TYPES = frozenset(PduType)
SERVICE_PROVIDER_SOURCE = 0x02  # A-ABORT source: DICOM UL service-provider (PS3.8 Table 9-26)


class IntakeRefusedError(NodeError):
    """A connection broke an intake limit before its association was accepted."""


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on what one connection may cost before and after its association is accepted."""

    first_pdu_timeout_s: float
    network_timeout_s: float
    max_pdu: int
    max_per_host: int

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> IntakeLimits:
        return cls(
            first_pdu_timeout_s=settings.acse_timeout_s,
            network_timeout_s=settings.network_timeout_s,
            max_pdu=settings.max_pdu,
            max_per_host=settings.max_associations_per_host,
        )

    def pdu_cap(self, pdu_type: int) -> int:
        """Largest PDU length accepted for ``pdu_type``: P-DATA up to the negotiated maximum."""
        if pdu_type == PduType.P_DATA_TF:
            return (self.max_pdu or UNLIMITED_PDU_CAP) + PDU_HEADER_LENGTH
        return MAX_ASSOCIATE_RQ_LENGTH


def read_exactly(sock: socket.socket, nr_bytes: int, deadline: float) -> bytearray:
    """Read ``nr_bytes``; fewer if the peer closes, ``TimeoutError`` once ``deadline`` passes.

    Each ``recv`` waits only for the time left, so a peer trickling a byte at a time can't
    stretch the read. The socket's timeout is left changed: the caller sets it again.
    """
    data = bytearray(nr_bytes)  # callers cap nr_bytes (PDU caps) before asking
    got = 0
    with memoryview(data) as view:
        while got < nr_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {nr_bytes} bytes arrived in time")
            sock.settimeout(left)
            count = sock.recv_into(view[got:], nr_bytes - got)  # no copy per chunk
            if not count:
                break
            got += count
    del data[got:]
    return data


def send_abort(sock: socket.socket, reason: AbortReason) -> None:
    """Best effort A-ABORT from the service provider (PS3.8 9.3.8); the peer may be gone."""
    pdu = A_ABORT_RQ()
    pdu.source = SERVICE_PROVIDER_SOURCE
    pdu.reason_diagnostic = reason
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(pdu.encode())


def handshake(context: ssl.SSLContext, sock: socket.socket, deadline: float) -> ssl.SSLSocket:
    """The server side of a TLS handshake, finished by ``deadline`` or ``TimeoutError``."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                readable, writable = [tls], []
            except ssl.SSLWantWriteError:
                readable, writable = [], [tls]
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(readable, writable, [], left)):
                raise TimeoutError("TLS handshake not finished in time")
    except BaseException:
        tls.close()
        raise


def _refused(sock: socket.socket, reason: AbortReason, message: str) -> IntakeRefusedError:
    send_abort(sock, reason)
    return IntakeRefusedError(message)


def read_association_request(sock: socket.socket, deadline: float) -> bytes | None:
    """The first PDU, which must be an A-ASSOCIATE-RQ of at most 64 KiB; ``None`` if closed."""
    header = read_exactly(sock, PDU_HEADER_LENGTH, deadline)
    if len(header) < PDU_HEADER_LENGTH:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type != PduType.A_ASSOCIATE_RQ:
        raise _refused(sock, AbortReason.UNEXPECTED_PDU,
                       f"first PDU has type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
    if length > MAX_ASSOCIATE_RQ_LENGTH:
        raise _refused(sock, AbortReason.INVALID_PDU_PARAMETER_VALUE,
                       f"A-ASSOCIATE-RQ declares {length} bytes, over {MAX_ASSOCIATE_RQ_LENGTH}")
    body = read_exactly(sock, length, deadline)
    return bytes(header + body) if len(body) == length else None


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with the first PDU already read, capped PDUs and deadlines.

    The DUL reads each PDU as ``recv(6)`` then ``recv(length)``
    (``DULServiceProvider._read_pdu_data``); the header is checked here before the body is read.
    An over-long PDU gets an A-ABORT and the connection is shut; the DUL then sees a closed
    transport (Evt17) and aborts the association.
    """

    _pending: bytearray
    _limits: IntakeLimits
    _body_due: bool

    @classmethod
    def adopt(cls, plain: AssociationSocket, first_pdu: bytes,
              limits: IntakeLimits) -> GuardedSocket:
        """Take over the socket pynetdicom's handler made, so its queued Evt5 stays the only one."""
        guarded = cls.__new__(cls)
        guarded.__dict__.update(plain.__dict__)
        guarded._pending = bytearray(first_pdu)
        guarded._limits = limits
        guarded._body_due = False
        return guarded

    @property
    def ready(self) -> bool:
        return bool(self._pending) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if self._body_due:
            self._body_due = False
            return self._read(nr_bytes)
        header = self._read(nr_bytes)
        if len(header) != PDU_HEADER_LENGTH:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _KNOWN_PDU_TYPES:
            return header  # the DUL reports it (Evt19) without reading a body
        if length > self._limits.pdu_cap(pdu_type):
            self._refuse(PduType(pdu_type), length)
            return bytearray()
        self._body_due = True
        return header

    def _read(self, nr_bytes: int) -> bytearray:
        data = self._pending[:nr_bytes]
        del self._pending[:nr_bytes]
        if len(data) == nr_bytes:
            return data
        sock = cast(socket.socket, self.socket)
        try:
            deadline = time.monotonic() + self._limits.network_timeout_s
            rest = read_exactly(sock, nr_bytes - len(data), deadline)
            return data + rest if data else rest
        finally:
            sock.settimeout(self._limits.network_timeout_s)

    def _refuse(self, pdu_type: PduType, length: int) -> None:
        peer = self.assoc.requestor.address
        LOGGER.warning("aborted the association from %s: %s declares %d bytes, over %d",
                       peer, pdu_type.name, length, self._limits.pdu_cap(pdu_type))
        sock = cast(socket.socket, self.socket)
        send_abort(sock, AbortReason.INVALID_PDU_PARAMETER_VALUE)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class IntakeHandler(RequestHandler):
    """One connection, on its own thread: TLS and the first PDU in bounded time, then the
    association, which this thread waits for so the per-host count covers its whole life."""

    _first_pdu: bytes = b""
    _association: Association | None = None

    def handle(self) -> None:
        server = cast(IntakeServer, self.server)
        deadline = time.monotonic() + server.limits.first_pdu_timeout_s
        try:
            if server.ssl_context is not None:
                self.request = handshake(server.ssl_context, self.request, deadline)
            first_pdu = read_association_request(self.request, deadline)
        except (OSError, IntakeRefusedError) as exc:
            LOGGER.warning("closed a connection from %s before its association: %s",
                           self.client_address[0], exc)
            return
        if first_pdu is None:
            LOGGER.debug("connection from %s closed before a whole PDU", self.client_address[0])
            return
        self._first_pdu = first_pdu
        self.request.settimeout(server.limits.network_timeout_s)
        super().handle()
        if self._association is not None:
            self._association.join()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        plain = cast(AssociationSocket, assoc.dul.socket)
        server = cast(IntakeServer, self.server)
        assoc.dul.socket = GuardedSocket.adopt(plain, self._first_pdu, server.limits)
        self._association = assoc
        return assoc

    def finish(self) -> None:
        self.server.shutdown_request(self.request)  # the TLS socket, when it was wrapped


class IntakeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server: accept only in the loop, the rest per connection."""

    daemon_threads = True

    def __init__(self, *args: Any, limits: IntakeLimits, **kwargs: Any) -> None:
        self.limits = limits
        self._per_host: Counter[str] = Counter()
        self._per_host_lock = threading.Lock()
        kwargs["request_handler"] = IntakeHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; the TLS handshake is the connection thread's job, not the accept loop's."""
        sock, address = cast(socket.socket, self.socket).accept()
        sock.settimeout(self.limits.first_pdu_timeout_s)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = _host(client_address)
        with self._per_host_lock:
            if self._per_host[host] >= self.limits.max_per_host:
                LOGGER.warning("refused a connection from %s: it already has %d open "
                               "(TRIAGE_MAX_ASSOCIATIONS_PER_HOST)", host, self._per_host[host])
                return False
            self._per_host[host] += 1
        return True

    def connections_from(self, host: str) -> int:
        """Open connections from ``host``, associated or not."""
        with self._per_host_lock:
            return self._per_host[host]

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            host = _host(client_address)
            with self._per_host_lock:
                self._per_host[host] -= 1
                if self._per_host[host] <= 0:
                    del self._per_host[host]

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOGGER.exception("connection from %s failed", _host(client_address))


def _host(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)


def start_intake_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    ssl_context: ssl.SSLContext | None,
    limits: IntakeLimits,
) -> IntakeServer:
    """``ae.start_server(..., block=False)`` with :class:`IntakeServer` (pynetdicom 3.0's
    ``start_server`` takes no server class)."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers,
                            server_class=IntakeServer, limits=limits)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)  # as start_server does, so server.shutdown() can remove it
    return cast(IntakeServer, server)
