"""``cxr-triage node`` as a real subprocess, with its own storage, database and broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import create_engine, text

from db.migrate import upgrade
from db.session import make_engine
from tests.support.dcmtk import echoscu
from tests.support.servers import free_port

NODE_AE = "CXR_TRIAGE"
MODALITY_AE = "STORESCU"


def migrate(db_url: str) -> None:
    """``cxr-triage db upgrade``, as an operator runs it before starting the node or workers."""
    engine = make_engine(db_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


class NodeProcess:
    """A node on a free port. ``env`` adds or overrides ``TRIAGE_*`` variables.

    ``start`` migrates the database first: the node only checks that the schema is current.
    """

    def __init__(self, workdir: Path, db_url: str, broker_url: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db_url = db_url
        self.storage = workdir / "storage"
        self.log_path = workdir / "node.log"
        self.env = {
            **os.environ,
            "TRIAGE_VAR_DIR": str(workdir / "var"),
            "TRIAGE_PORT": str(self.port),
            "TRIAGE_AE_TITLE": NODE_AE,
            "TRIAGE_ALLOWED_AETS": f"{MODALITY_AE},ECHOSCU",
            "TRIAGE_STORAGE_DIR": str(self.storage),
            "TRIAGE_DB_URL": db_url,
            "TRIAGE_BROKER_URL": broker_url,
            "TRIAGE_BROKER_CONNECT_TIMEOUT_S": "1",
            "TRIAGE_MIN_FREE_BYTES": "0",
            "TRIAGE_SWEEP_INTERVAL_S": "1",
            "TRIAGE_SWEEP_AFTER_S": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        migrate(self.env["TRIAGE_DB_URL"])
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", "node"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            if "listening on" in self.log()[offset:]:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"node did not start in {timeout} s:\n{self.log()}")

    def echo(self) -> bool:
        return echoscu(self.port, calling_ae="ECHOSCU").returncode == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as in a power cut of the process."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        """Run a query against the node's database."""
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def instances(self) -> dict[str, tuple[object, ...]]:
        """SOP Instance UID -> (status, status_reason, file_path, content_sha256, receive_count)."""
        rows = self.rows(
            "SELECT sop_instance_uid, status, status_reason, file_path, content_sha256, "
            "receive_count FROM instance"
        )
        return {str(row[0]): row[1:] for row in rows}
