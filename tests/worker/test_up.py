"""`cxr-triage up` on embedded defaults: SQLite, the filesystem broker, one machine.

``up`` supervises the node, a scoring worker and a delivery worker: a worker that dies is
restarted while the node keeps listening, and a PACS that never answers doesn't hold up scoring.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cxr_triage.up import Backoff, ChildSpec, Stack
from db.models import Instance, Score, Study
from tests.support import dicomgen
from tests.support.dcmtk import echoscu, storescu
from tests.support.orthanc import OrthancServer
from tests.support.servers import free_port, wait_for_port
from tests.worker.processes import query, wait_until

CHILD_ROLES = {"node": ("node",), "score-worker": ("--queues", "score"),
               "deliver-worker": ("--queues", "deliver")}


def _children_of(parent: int) -> dict[int, list[str]]:
    """Direct children of ``parent`` (from /proc) and their command lines."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")
    return found


def _role(cmdline: list[str]) -> str | None:
    words = cmdline[cmdline.index("cxr_triage") + 1:] if "cxr_triage" in cmdline else []
    return next((role for role, marks in CHILD_ROLES.items()
                 if any(words[i:i + len(marks)] == list(marks) for i in range(len(words)))),
                None)


class UpProcess:
    """``cxr-triage up`` as a real subprocess, with its log and its children's pids."""

    def __init__(self, tmp_path: Path, model_dir: Path, destinations: str) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        var = tmp_path / "var"
        self.db_url = f"sqlite:///{var / 'triage.db'}"
        self.env = {
            **os.environ,
            "TRIAGE_VAR_DIR": str(var),
            "TRIAGE_DB_URL": self.db_url,
            "TRIAGE_STORAGE_DIR": str(var / "storage"),
            "TRIAGE_BROKER_DIR": str(var / "broker"),
            "TRIAGE_PORT": str(self.port),
            "TRIAGE_STUDY_QUIET_S": "1",
            "TRIAGE_MIN_FREE_BYTES": "0",
            "TRIAGE_DELIVERY_BACKOFF_S": "1",
            "TRIAGE_DELIVERY_BACKOFF_MAX_S": "2",
            "TRIAGE_DESTINATIONS": destinations,
            "TRIAGE_RESULT_IMAGE": "off",  # SRs only: the PACS counts stay exact
        }
        self.env.pop("TRIAGE_BROKER_URL", None)
        self.log_path = tmp_path / "up.log"
        self.model_dir = model_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> UpProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", "up", "--model-dir", str(self.model_dir),
                 "--allow-aet", "STORESCU"], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.tmp_path)
        wait_for_port(self.port, timeout=90)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> dict[str, int]:
        """The pid of each running child, by role."""
        assert self.process is not None
        return {role: pid for pid, cmd in _children_of(self.process.pid).items()
                if (role := _role(cmd)) is not None}

    def send_study(self, name: str, images: int = 1) -> str:
        files = dicomgen.write_series(self.tmp_path / name, images)
        run = storescu(self.port, files)
        assert len(run.succeeded) == images, run.output[-3000:]
        return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def stop(self) -> int:
        """SIGTERM ``up`` and wait; kill it and its children if it hangs."""
        if self.process is None:
            return 0
        children = list(_children_of(self.process.pid))
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            for pid in children:  # each child leads its own process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"up did not stop on SIGTERM:\n{self.log()[-4000:]}") from None


def _sent(db_url: str) -> int:
    return len(query(db_url, "SELECT id FROM delivery WHERE state = 'sent'"))


def test_up_runs_the_whole_path_without_servers(tmp_path: Path, tiny_ensemble: Path) -> None:
    pacs = OrthancServer(tmp_path / "orthanc").start()
    up = UpProcess(tmp_path, tiny_ensemble, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}")
    try:
        up.start()
        files = dicomgen.write_series(tmp_path / "study", 2)
        assert len(storescu(up.port, files).succeeded) == 2
        wait_until(lambda: _sent(up.db_url) == 1, 180, "the SR to be delivered", up.log)
        assert [r[0] for r in query(up.db_url, "SELECT status FROM instance")] == ["scored"] * 2
        assert len(pacs.instances()) == 1
        assert (tmp_path / "var" / "broker" / "queue").is_dir()  # the filesystem broker
        assert set(up.children()) == set(CHILD_ROLES)  # scoring and delivery apart
    finally:
        code = up.stop()
        pacs.stop()
    assert code == 0, up.log()[-3000:]


def test_killed_workers_are_restarted_and_the_node_keeps_listening(
        tmp_path: Path, tiny_ensemble: Path) -> None:
    pacs = OrthancServer(tmp_path / "orthanc").start()
    up = UpProcess(tmp_path, tiny_ensemble, f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}")
    try:
        up.start()
        up.send_study("first")
        wait_until(lambda: _sent(up.db_url) == 1, 180, "the first SR to be delivered", up.log)
        before = up.children()
        for role in ("score-worker", "deliver-worker"):
            os.kill(before[role], signal.SIGKILL)  # the main process; up reaps its pool
        echo = echoscu(up.port)  # the workers are down, the listener is not
        assert echo.returncode == 0, echo.stdout + echo.stderr

        def restarted() -> bool:
            now = up.children()
            return all(now.get(r) not in (None, before[r]) for r in ("score-worker",
                                                                     "deliver-worker"))

        wait_until(restarted, 60, "up to restart both workers", up.log)
        up.send_study("second")
        wait_until(lambda: _sent(up.db_url) == 2, 180, "the second SR to be delivered", up.log)
        statuses = [r[0] for r in query(up.db_url, "SELECT status FROM instance")]
        assert statuses == ["scored"] * 2
        assert len(pacs.instances()) == 2
        assert up.children()["node"] == before["node"]  # never stopped or restarted
        assert up.process is not None and up.process.poll() is None
        assert "restarting it in" in up.log()
    finally:
        code = up.stop()
        pacs.stop()
    assert code == 0, up.log()[-3000:]


@dataclass
class _Connection:
    opened_at: dt.datetime
    closed_at: dt.datetime | None = None


class SilentPacs:
    """Accepts TCP connections, reads what arrives and never answers: a hung PACS."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections: list[_Connection] = []
        self._listener = socket.socket()
        self._sockets: list[socket.socket] = []

    def start(self) -> SilentPacs:
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            record = _Connection(dt.datetime.now(dt.UTC))
            self.connections.append(record)
            self._sockets.append(conn)
            threading.Thread(target=self._swallow, args=(conn, record), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket, record: _Connection) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        record.closed_at = dt.datetime.now(dt.UTC)

    def open_connections(self) -> list[_Connection]:
        return [c for c in self.connections if c.closed_at is None]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._sockets:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def _scored_at(db_url: str, study_uid: str) -> dt.datetime | None:
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return session.scalar(
                select(Score.created_at).join(Instance, Score.instance_id == Instance.id)
                .join(Study, Instance.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid))
    finally:
        engine.dispose()


def test_a_hung_pacs_does_not_hold_up_scoring(tmp_path: Path, tiny_ensemble: Path) -> None:
    pacs = SilentPacs().start()
    up = UpProcess(tmp_path, tiny_ensemble, f"HUNG@127.0.0.1:{pacs.port}")
    try:
        up.start()
        up.send_study("first")
        wait_until(lambda: bool(pacs.open_connections()), 180,
                   "a delivery to the hung PACS to start", up.log)
        hanging = pacs.open_connections()
        second = up.send_study("second")
        wait_until(lambda: _scored_at(up.db_url, second) is not None, 180,
                   "the second study to be scored", up.log)
        scored_at = _scored_at(up.db_url, second)
        assert scored_at is not None
        # A delivery that was hanging before the image arrived still hung when it was scored.
        assert any(c.closed_at is None or c.closed_at > scored_at for c in hanging), (
            f"scored at {scored_at}; connections {pacs.connections}")
        states = [r[0] for r in query(up.db_url, "SELECT state FROM delivery")]
        assert states and not set(states) - {"pending", "retrying"}, states
    finally:
        pacs.stop()  # the SCU sees the connection close, so the delivery worker stops at once
        code = up.stop()
    assert code == 0, up.log()[-3000:]


# The supervisor itself, with short-lived children (``cxr-triage --version`` exits 0 at once).

@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TRIAGE_DB_URL": f"sqlite:///{tmp_path / 'triage.db'}"}


def test_a_child_that_exits_is_restarted_with_growing_delays(
        stack_env: dict[str, str]) -> None:
    backoff = Backoff(initial_s=0.2, cap_s=0.4, stable_s=60.0)
    assert [Backoff().delay_s(n) for n in (1, 2, 3, 7, 8, 50)] == [1, 2, 4, 60, 60, 60]
    stack = Stack(stack_env, children=[ChildSpec("short", ("--version",))], backoff=backoff)
    stack.start()
    pids = {stack.processes["short"].pid}
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 3 and time.monotonic() < deadline:
            assert stack.poll() is None
            pids.add(stack.processes["short"].pid)
            time.sleep(0.05)
    finally:
        stack.stop()
    assert len(pids) >= 3  # started, then restarted twice


def test_a_child_with_a_configuration_error_stops_up(stack_env: dict[str, str]) -> None:
    stack = Stack(stack_env, children=[
        ChildSpec("bad", ("node", "--no-such-option")),  # argparse: exit status 2
        ChildSpec("sleeper", ("nightly", "--at", "00:00", "--", "db", "current")),
    ])
    stack.start()
    assert stack.supervise(interval_s=0.05) == 2
    assert all(p.returncode is not None for p in stack.processes.values())
