"""``cxr-triage worker`` as a real subprocess (its own session, so a test can SIGKILL it all)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support import hooked_cli
from tests.support.node import migrate


class WorkerProcess:
    """A Celery worker on ``broker_url`` consuming both queues; ``env`` adds TRIAGE_* values.

    ``hooks`` (``tests.support.hooked_cli`` variables) start it through that test entry point
    with those fault hooks installed.
    """

    def __init__(self, workdir: Path, *, db_url: str, broker_url: str, model_dir: Path,
                 storage_dir: Path, destinations: str = "",
                 env: Mapping[str, str] | None = None,
                 hooks: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self.env = {
            **os.environ,
            "TRIAGE_VAR_DIR": str(workdir / "var"),
            "TRIAGE_DB_URL": db_url,
            "TRIAGE_BROKER_URL": broker_url,
            "TRIAGE_MODEL_DIR": str(model_dir),
            "TRIAGE_STORAGE_DIR": str(storage_dir),
            "TRIAGE_DESTINATIONS": destinations,
            "TRIAGE_STUDY_QUIET_S": "1",
            "TRIAGE_TORCH_THREADS": "1",
            "TRIAGE_DEVICE": "cpu",
            "TRIAGE_DELIVERY_BACKOFF_S": "1",
            "TRIAGE_DELIVERY_BACKOFF_MAX_S": "2",
            # SRs only unless a test asks for result images (tests/integration/
            # test_result_image_pacs.py, tests/web/test_browser.py): counts stay exact.
            "TRIAGE_RESULT_IMAGE": "off",
            **(env or {}),
        }
        args = ("worker", "--concurrency", "2")
        if hooks:
            self.env = hooked_cli.environment(self.env, hooks)
            self.command = hooked_cli.command(*args)
        else:
            self.command = [sys.executable, "-m", "cxr_triage", *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        migrate(self.env["TRIAGE_DB_URL"])  # the worker only checks that the schema is current
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if " ready." in self.log()[offset:]:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (a power cut)."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


def query(db_url: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of one query against the test's database."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               logs: Callable[[], str] = lambda: "") -> None:
    """Poll ``predicate``; fail with ``what`` and the logs when it stays false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{logs()[-6000:]}")
