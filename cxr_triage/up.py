"""``cxr-triage up``: the node and CPU workers on one machine, under a small supervisor.

Each child is a ``cxr-triage`` subcommand in its own process group: the DICOM node, a scoring
worker and a delivery worker, so a PACS that never answers can't hold up scoring. A child that
exits is restarted after a backoff (1 s doubling to 60 s, reset once it stayed up a minute);
the others, the node above all, keep running. SIGTERM or SIGINT stops every child: SIGTERM,
a wait, then SIGKILL of its whole process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from common.errors import TriageError
from common.queues import QUEUE_DELIVER, QUEUE_SCORE
from common.threads import WAIT_POLICY_ENV, inference_threads

LOGGER = logging.getLogger(__name__)

# The node shares the machine: the scoring worker leaves it a core (PERF-NOTES: with the node
# ingesting on 2 cores, a 2-thread worker fell to 0.52 img/s and halved ingest; with 1 thread
# it kept 0.89 img/s and ingest its full rate), and OpenMP threads sleep when they wait
# (common.threads; docs/benchmarks.md, "Threads").
NODE_RESERVED_CORES = 1
# The CLI's exit status for TriageError/SettingError: a configuration a restart can't fix.
CONFIGURATION_ERROR_EXIT = 2


def require_ensemble(model_dir: Path, live_version: str | None = None) -> None:
    """Refuse to start without an ensemble (a promoted model, or one in ``model_dir``), and say
    how to get one."""
    if live_version is None and not (model_dir / "ensemble.json").is_file():
        raise TriageError(
            f"no promoted model and no ensemble in {model_dir} (TRIAGE_MODEL_DIR). Import and "
            "promote one (`cxr-triage model import DIR`, `cxr-triage model promote VERSION`), "
            f"train one with `cxr-triage train --data DATA_DIR --out {model_dir}`, or run "
            "`make demo`, which builds a small demo ensemble (not for clinical use)"
        )


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: ``cxr-triage ARGS`` with ``env`` added to the stack's."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def default_children(node_args: Sequence[str] = (),
                     worker_args: Sequence[str] = ()) -> list[ChildSpec]:
    """The node, a scoring worker, a delivery worker (TRIAGE_DELIVER_CONCURRENCY) and the web
    app (TRIAGE_WEB_HOST, TRIAGE_WEB_PORT)."""
    return [
        ChildSpec("node", ("node", *node_args)),
        ChildSpec("score-worker", ("worker", "--queues", QUEUE_SCORE, *worker_args)),
        ChildSpec("deliver-worker", ("worker", "--queues", QUEUE_DELIVER, *worker_args)),
        ChildSpec("web", ("web",)),
    ]


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``initial_s`` doubling to ``cap_s``; reset after ``stable_s`` up."""

    initial_s: float = 1.0
    cap_s: float = 60.0
    stable_s: float = 60.0

    def delay_s(self, failures: int) -> float:
        """The wait before restart number ``failures`` (1-based) of a child."""
        return min(self.cap_s, self.initial_s * 2.0 ** min(max(failures - 1, 0), 32))


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row without staying up ``stable_s``
    ever_stable: bool = False
    restart_at: float | None = None


class Stack:
    """Named child processes sharing one environment, started, supervised and stopped together.

    ``children`` defaults to :func:`default_children`; another process is one more
    :class:`ChildSpec` in that list.
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path | None = None,
                 node_args: Sequence[str] = (), worker_args: Sequence[str] = (), *,
                 children: Sequence[ChildSpec] | None = None,
                 backoff: Backoff = Backoff()) -> None:
        self.env = dict(env)
        self.env.setdefault("TRIAGE_TORCH_THREADS", str(inference_threads(NODE_RESERVED_CORES)))
        self.env.setdefault(WAIT_POLICY_ENV, "PASSIVE")
        self.log_dir = log_dir
        self.backoff = backoff
        specs = default_children(node_args, worker_args) if children is None else children
        self._children = [_Child(spec) for spec in specs]
        self._stop_requested = False

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The current (or last) process of each child that was started, by name."""
        return {c.spec.name: c.process for c in self._children if c.process is not None}

    def _spawn(self, child: _Child) -> None:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{child.spec.name}.log").open("ab")
        try:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "cxr_triage", *child.spec.args],
                env={**self.env, **child.spec.env}, stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,  # its own group: we signal it, and reap its pool
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own descriptor
        child.started_at = time.monotonic()
        child.restart_at = None
        LOGGER.info("up: started %s (pid %d)", child.spec.name, child.process.pid)

    def migrate(self) -> None:
        """Bring the schema to head (under the migration lock); node and worker only check it."""
        from db.migrate import upgrade
        from db.session import make_engine
        from db.settings import DbSettings

        engine = make_engine(DbSettings.from_env(self.env).url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def live_model_version(self) -> str | None:
        """The promoted model version the workers will load, if any (after ``migrate``)."""
        from db.registry import live_model
        from db.session import make_engine, make_session_factory
        from db.settings import DbSettings

        engine = make_engine(DbSettings.from_env(self.env).url)
        try:
            with make_session_factory(engine)() as session:
                live = live_model(session)
                return None if live is None else str(live.version)
        finally:
            engine.dispose()

    def start(self) -> None:
        """Migrate the schema, then start every child."""
        self.migrate()
        for child in self._children:
            self._spawn(child)

    def failed(self) -> str | None:
        """The name of a child that is not running now (exited, or waiting to restart)."""
        return next((c.spec.name for c in self._children
                     if c.process is None or _has_exited(c.process)), None)

    def request_stop(self) -> None:
        """Ask :meth:`supervise` to stop every child and return (safe in a signal handler)."""
        self._stop_requested = True

    def _on_exit(self, child: _Child, now: float) -> int | None:
        """Schedule the restart of an exited child; an exit status when ``up`` must give up."""
        assert child.process is not None
        code = _reap(child.process)
        stable = now - child.started_at >= self.backoff.stable_s
        child.ever_stable = child.ever_stable or stable
        child.failures = 1 if stable else child.failures + 1
        if code == CONFIGURATION_ERROR_EXIT and not child.ever_stable:
            LOGGER.error("up: %s exited with %d (a configuration error; see its output above); "
                         "fix it and start again", child.spec.name, code)
            return code
        delay = self.backoff.delay_s(child.failures)
        LOGGER.error("up: %s (pid %d) exited with %s after %.0f s; restarting it in %.0f s "
                     "(restart %d in a row)", child.spec.name, child.process.pid, code,
                     now - child.started_at, delay, child.failures)
        child.restart_at = now + delay
        return None

    def poll(self) -> int | None:
        """One supervision step: notice exits and restart what is due. An exit status to stop."""
        now = time.monotonic()
        for child in self._children:
            if child.process is None:
                continue
            exited = child.restart_at is None and _has_exited(child.process)
            if exited and (code := self._on_exit(child, now)) is not None:
                return code
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
        return None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every child, wait up to ``timeout_s``, then SIGKILL what is left."""
        running = [c for c in self._children
                   if c.process is not None and c.process.returncode is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGTERM)  # the leader shuts its pool down
        deadline = time.monotonic() + timeout_s
        for child in running:
            assert child.process is not None
            while not _has_exited(child.process) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _has_exited(child.process):
                LOGGER.warning("up: %s did not stop within %.0f s; killing it",
                               child.spec.name, timeout_s)
            _reap(child.process)
            child.restart_at = None

    def supervise(self, interval_s: float = 0.25) -> int:
        """Restart children that exit until :meth:`request_stop` or Ctrl-C; then stop all.

        Returns 0 when asked to stop, or the configuration-error status of a child that could
        not start at all.
        """
        try:
            while not self._stop_requested:
                if (code := self.poll()) is not None:
                    return code
                time.sleep(interval_s)
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            LOGGER.info("up: stopping %s", ", ".join(c.spec.name for c in self._children))
            self.stop()


def _has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether a child exited, without reaping it: its pid (and group id) stay reserved."""
    if process.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # not on every Unix
        return process.poll() is not None
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return process.poll() is not None


def _reap(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL what is left of a child's process group (its pool, or itself), then reap it.

    The leader is a zombie or alive until reaped, so the group id can't have been reused.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def _warn_if_nobody_may_send(node_args: Sequence[str]) -> None:
    """Say at start when the node would refuse every association (empty allow-list)."""
    from dicom_node.admission import empty_allow_list_warning
    from dicom_node.settings import NodeSettings

    settings = NodeSettings.from_env()
    flagged = tuple(node_args[i + 1] for i, arg in enumerate(node_args[:-1])
                    if arg == "--allow-aet")
    warning = empty_allow_list_warning((*settings.allowed_aets, *flagged),
                                       settings.allow_any_aet or "--allow-any-aet" in node_args)
    if warning:
        print(f"cxr-triage up: warning: {warning}", file=sys.stderr)


def run_up(model_dir: Path, node_args: Sequence[str]) -> int:
    """Start the node and the workers with the current environment; block until stopped."""
    _warn_if_nobody_may_send(node_args)  # first: even when something else stops up
    env = {**os.environ, "TRIAGE_MODEL_DIR": str(model_dir)}
    stack = Stack(env, node_args=node_args)
    stack.migrate()
    live = stack.live_model_version()
    require_ensemble(model_dir, live)

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stack.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stack.start()
    names = ", ".join(stack.processes)
    model = f"promoted model {live}" if live else f"ensemble {model_dir}"
    print(f"cxr-triage up: {names} running ({model}); children that exit are "
          "restarted; Ctrl-C stops them all", file=sys.stderr)
    return stack.supervise()
