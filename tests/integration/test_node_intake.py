"""Intake that can't be starved: silent connections, oversized PDUs and the per-host limit.

Every test runs the node as a real process and attacks it over real loopback sockets. The
memory bound is ``RSS_GROWTH_BOUND_KB`` over the node's own baseline: what it imports (and so its
idle size) is not this test's business, buffering an attacker's PDU is.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.ae import VERIFICATION
from tests.support import dicomgen
from tests.support.certs import Pki, make_pki
from tests.support.dcmtk import storescu
from tests.support.node import NODE_AE, NodeProcess
from tests.support.servers import RedisServer

SILENT = 30
RSS_GROWTH_BOUND_KB = 64 * 1024  # peak resident set (VmHWM) may grow 64 MiB over the baseline
FLOOD_BYTES = 600 * 1024 * 1024  # what the attacker tries to push after a huge declared length
OTHER_HOST = "127.0.0.2"  # another loopback address, as a second machine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _node(tmp_path: Path, redis: RedisServer, **env: str) -> NodeProcess:
    variables = {f"TRIAGE_{name.upper()}": value for name, value in env.items()}
    return NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis.url,
                       env=variables).start()


@contextlib.contextmanager
def _silent_connections(port: int, count: int, first_byte: bytes,
                        source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """``count`` connections that each send one byte and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                            source_address=(source, 0))
            sock.sendall(first_byte)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _open(sock: socket.socket) -> bool:
    """True while the node keeps the connection open (nothing to read, no end of stream)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _closed_by_peer(sock: socket.socket, timeout: float = 60.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _keep_sending(node: NodeProcess, tmp_path: Path, rounds: int, extra: list[str]) -> None:
    for i in range(rounds):
        files = dicomgen.write_series(tmp_path / f"round{i}", 2, accession=f"ACC{i}")
        run = storescu(node.port, files, extra=extra, timeout=120)
        assert len(run.succeeded) == 2, run.output[-2000:]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_silent_connections_block_nobody(tmp_path: Path, redis_server: RedisServer, pki: Pki,
                                         tls: bool) -> None:
    # All 30 from the modality's own address get in (the per-host limit is raised) and stay
    # open for the whole test: they must take no association slot (25) and block no handshake.
    env = {"max_associations_per_host": "64", "acse_timeout_s": "600"}
    if tls:
        env |= {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    node = _node(tmp_path, redis_server, **env)
    extra = ["+tla", "+cf", str(pki.ca_cert)] if tls else []
    first_byte = b"\x16" if tls else b"\x01"  # a TLS record / an A-ASSOCIATE-RQ, never finished
    try:
        with _silent_connections(node.port, SILENT, first_byte) as silent:
            _keep_sending(node, tmp_path, 4, extra)
            assert all(_open(sock) for sock in silent)  # they were held throughout
        assert len(node.instances()) == 8
    finally:
        node.stop()


def test_silent_connection_closed_after_first_pdu_timeout(tmp_path: Path,
                                                          redis_server: RedisServer) -> None:
    node = _node(tmp_path, redis_server, acse_timeout_s="2", max_associations_per_host="2")
    try:
        with _silent_connections(node.port, 2, b"\x01") as silent:
            assert all(_closed_by_peer(sock) for sock in silent), node.log()[-2000:]
        path = dicomgen.write(dicomgen.radiograph(), tmp_path / "a.dcm")
        run = storescu(node.port, [path])  # the two slots of 127.0.0.1 were given back
        assert run.status_of(path) == 0, run.output[-2000:]
        assert "before its association" in node.log()
    finally:
        node.stop()


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _flood(sock: socket.socket, header: bytes) -> int:
    """Send ``header`` then up to 600 MiB; the bytes sent before the node cut the connection."""
    chunk = b"\x00" * (1024 * 1024)
    sent = 0
    sock.settimeout(30)
    try:
        sock.sendall(header)
        while sent < FLOOD_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        return sent
    raise AssertionError("the node read a 600 MiB PDU it should have refused")


def _associate(port: int, source: str = "127.0.0.1", aet: str = "STORESCU") -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(source, 0))


def test_oversized_pdus_refused_within_memory_bound(tmp_path: Path,
                                                    redis_server: RedisServer) -> None:
    node = _node(tmp_path, redis_server)
    assert node.process is not None
    pid = node.process.pid
    try:
        path = dicomgen.write(dicomgen.radiograph(), tmp_path / "before.dcm")
        assert storescu(node.port, [path]).status_of(path) == 0
        baseline = _kb(pid, "VmHWM")

        huge = struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF)  # A-ASSOCIATE-RQ, 4 GiB declared
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            rq_sent = _flood(sock, huge)

        assoc = _associate(node.port)  # an admitted association, then a 4 GiB P-DATA-TF
        assert assoc.is_established
        raw = assoc.dul.socket.socket  # type: ignore[union-attr]
        pdata_sent = _flood(raw, struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
        assert _wait(lambda: not assoc.is_established)
        assoc.kill()

        after = dicomgen.write(dicomgen.radiograph(seed=1), tmp_path / "after.dcm")
        assert storescu(node.port, [after]).status_of(after) == 0  # the node keeps serving
        peak, now = _kb(pid, "VmHWM"), _kb(pid, "VmRSS")
        report = (f"VmHWM {baseline} kB before, {peak} kB after (VmRSS {now} kB); "
                  f"flood bytes accepted: RQ {rq_sent}, P-DATA {pdata_sent}")
        assert peak - baseline < RSS_GROWTH_BOUND_KB, report
        assert "A-ASSOCIATE-RQ declares 4294967295 bytes" in node.log()
        assert "P_DATA_TF declares 4294967295 bytes" in node.log()
    finally:
        node.stop()


def test_per_host_limit(tmp_path: Path, redis_server: RedisServer) -> None:
    node = _node(tmp_path, redis_server, max_associations_per_host="3")
    held: list[Association] = []
    try:
        held = [_associate(node.port, aet="ECHOSCU") for _ in range(3)]
        assert all(assoc.is_established for assoc in held)
        refused = _associate(node.port, aet="ECHOSCU")
        assert not refused.is_established  # a fourth from 127.0.0.1: connection closed
        assert all(assoc.send_c_echo().Status == 0 for assoc in held)  # the three are served
        other = _associate(node.port, source=OTHER_HOST, aet="ECHOSCU")
        assert other.is_established  # another address has its own count
        other.release()
        held.pop().release()
        assert _wait(lambda: _established_then_release(node.port)), node.log()[-2000:]
        assert "TRIAGE_MAX_ASSOCIATIONS_PER_HOST" in node.log()
    finally:
        for assoc in held:
            assoc.release()
        node.stop()


def _established_then_release(port: int) -> bool:
    assoc = _associate(port, aet="ECHOSCU")
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established
