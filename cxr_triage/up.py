"""``cxr-triage up``: the node and a CPU worker on one machine, supervised together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from common.errors import TriageError

LOGGER = logging.getLogger(__name__)

# PERF-NOTES: with the node ingesting on 2 cores, a 2-thread worker falls to 0.52 img/s and
# halves ingest; with 1 thread it keeps 0.89 img/s and ingest stays at full rate.
SHARED_MACHINE_TORCH_THREADS = "1"


def require_ensemble(model_dir: Path) -> None:
    """Refuse to start without a trained ensemble, and say how to get one."""
    if not (model_dir / "ensemble.json").is_file():
        raise TriageError(
            f"no ensemble in {model_dir} (TRIAGE_MODEL_DIR). Train one with "
            f"`cxr-triage train --data DATA_DIR --out {model_dir}`, or run `make demo`, which "
            "builds a small demo ensemble (not for clinical use)"
        )


class Stack:
    """The node and one worker as child processes sharing one environment."""

    def __init__(self, env: Mapping[str, str], log_dir: Path | None = None,
                 node_args: Sequence[str] = (), worker_args: Sequence[str] = ()) -> None:
        self.env = dict(env)
        self.env.setdefault("TRIAGE_TORCH_THREADS", SHARED_MACHINE_TORCH_THREADS)
        self.log_dir = log_dir
        self.node_args = list(node_args)
        self.worker_args = list(worker_args)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage", *args], env=self.env,
            stdout=output, stderr=subprocess.STDOUT if output else None,
        )

    def migrate(self) -> None:
        """Bring the schema up to date once, so node and worker don't both migrate at once."""
        from db.migrate import upgrade
        from db.session import make_engine
        from db.settings import DbSettings

        engine = make_engine(DbSettings.from_env(self.env).url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def start(self) -> None:
        self.migrate()
        self._spawn("node", ["node", *self.node_args])
        self._spawn("worker", ["worker", "--queues", "score,deliver", "--concurrency", "1",
                               *self.worker_args])

    def failed(self) -> str | None:
        """The name of a child that exited, if any."""
        return next((n for n, p in self.processes.items() if p.poll() is not None), None)

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def supervise(self) -> int:
        """Block until a child exits (then stop the other) or until interrupted."""
        try:
            while (name := self.failed()) is None:
                time.sleep(0.5)
            code = self.processes[name].returncode
            LOGGER.error("%s exited with %s; stopping the rest", name, code)
            return code or 1
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_up(model_dir: Path, node_args: Sequence[str]) -> int:
    """Start node + worker with the current environment; block until stopped."""
    require_ensemble(model_dir)
    signal.signal(signal.SIGTERM, _interrupt)
    env = {**os.environ, "TRIAGE_MODEL_DIR": str(model_dir)}
    stack = Stack(env, node_args=node_args)
    stack.start()
    print(f"cxr-triage up: node and worker running (ensemble {model_dir}); Ctrl-C stops both",
          file=sys.stderr)
    return stack.supervise()
