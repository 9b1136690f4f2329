"""A real MLLP listener (a RIS stand-in) for the HL7 tests, on python-hl7's asyncio server.

Run as a process on loopback::

    python -m tests.support.mllp_listener --port 2575 --record received.jsonl \\
        --replies AE:207,AA [--cert server.pem --key server.key [--ca ca.pem]]

``--replies`` says how to answer each message received, in order; the last one repeats:

* ``AA``, ``CA``: accept; ``AE``, ``AR``, ``CE``, ``CR``, optionally ``:CODE`` (HL7 Table 0357,
  sent in ERR-3 with an ERR-8 text that names a patient, as real RIS errors may);
* ``DROP``: close the connection without an ACK; ``SILENT``: keep it open, never answer;
* ``WRONG_ID``: AA for another control id; ``GARBAGE``: a framed block that is not HL7.

Every message is appended to ``--record`` (JSON lines: ``n``, ``reply``, ``message``) and
flushed before the reply is sent. ``MllpListener`` starts and stops it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

from tests.support.servers import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
OTHER_REPLIES = frozenset({"DROP", "SILENT", "WRONG_ID", "GARBAGE"})


def parse_replies(text: str) -> list[str]:
    """Check a ``--replies`` plan: ``AE:207,AA`` -> ``["AE:207", "AA"]``."""
    replies = [part.strip().upper() for part in text.split(",") if part.strip()]
    for reply in replies or [""]:
        code, _, error = reply.partition(":")
        if code in OTHER_REPLIES and not error:
            continue
        if code not in ACK_CODES or (error and not error.isdigit()):
            raise argparse.ArgumentTypeError(f"unknown reply {reply!r}")
    return replies


def make_ack(message: hl7.Message, reply: str) -> str:
    """The ACK of ``message`` for a plan entry such as ``AA`` or ``AE:207``."""
    code, _, error = reply.partition(":")
    if reply == "WRONG_ID":
        ack = message.create_ack("AA", message_id="LISTENER1")
        ack.segment("MSA").assign_field("NOT-YOUR-MESSAGE", 2)
        return str(ack)
    ack = message.create_ack(code, message_id="LISTENER1", application="TEST_RIS")
    if error:
        err = ack.create_segment([ack.create_field(["ERR"])])
        err.assign_field(error, 3, 1, 1)
        err.assign_field(f"error {error}", 3, 1, 2)
        err.assign_field("HL70357", 3, 1, 3)
        err.assign_field("E", 4)
        err.assign_field("Patient DOE^JANE not found", 8)  # free text a sender must not log
        ack.append(err)
    return str(ack)


class Listener:
    """Answers each message as the plan says, and records it."""

    def __init__(self, replies: Sequence[str], record: Path) -> None:
        self.replies = list(replies)
        self.record = record
        self.count = 0

    def next_reply(self) -> str:
        reply = self.replies[min(self.count, len(self.replies) - 1)]
        self.count += 1
        return reply

    def write(self, reply: str, message: str) -> None:
        with self.record.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"n": self.count, "reply": reply, "message": message}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    async def handle(self, reader: Any, writer: Any) -> None:
        """One connection: read messages until the peer closes; answer each."""
        try:
            while True:
                block = await reader.readblock()
                text = block.decode("utf-8")
                reply = self.next_reply()
                self.write(reply, text)
                if reply == "DROP":
                    return
                if reply == "SILENT":
                    await reader.read()  # until the sender gives up and closes
                    return
                if reply == "GARBAGE":
                    writer.writeblock(b"HTTP/1.1 400 Bad Request\r")
                else:
                    writer.writeblock(make_ack(hl7.parse(text), reply).encode("utf-8"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return  # the peer closed (or a port probe connected and left)
        finally:
            writer.close()


async def serve(port: int, listener: Listener, context: ssl.SSLContext | None) -> None:
    server = await start_hl7_server(listener.handle, "127.0.0.1", port, encoding="utf-8",
                                    ssl=context)
    async with server:
        await server.serve_forever()


def _tls(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key) if key else None)
    if ca is not None:  # mutual TLS: the sender must show a certificate from this CA
        context.load_verify_locations(str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--replies", type=parse_replies, default=["AA"])
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--ca", type=Path)
    args = parser.parse_args(argv)
    listener = Listener(args.replies, args.record)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, listener, _tls(args.cert, args.key, args.ca)))


class MllpListener:
    """The listener as a subprocess on a loopback port; ``stop()`` then ``start()`` again
    brings it back on the same port."""

    def __init__(self, workdir: Path, *, replies: str = "AA", port: int | None = None,
                 tls: tuple[Path, Path] | None = None, client_ca: Path | None = None) -> None:
        self.workdir = workdir
        self.replies = replies
        self.port = port or free_port()
        self.tls = tls
        self.client_ca = client_ca
        self.record = workdir / "received.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, replies: str | None = None) -> MllpListener:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.support.mllp_listener", "--port", str(self.port),
                   "--record", str(self.record), "--replies", replies or self.replies]
        if self.tls is not None:
            command += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        if self.client_ca is not None:
            command += ["--ca", str(self.client_ca)]
        log = (self.workdir / "listener.log").open("ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)
        log.close()
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the MLLP listener did not start; see {self.workdir}/"
                               "listener.log") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def received(self) -> list[dict[str, Any]]:
        """The messages received so far, oldest first."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def __enter__(self) -> MllpListener:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    main()
