"""Where the node's time goes per instance: the node runs in this process with timers around
each step of the durable C-STORE path (used by ``bench/ingest.py``).

Steps timed: receive (from the C-STORE command to the handler: P-DATA parsing and writing the
temporary file), header parse, hash, the wait for the file's fsync (which runs on a pool thread
while the handler hashes), rename and directory creation, fsync of the directory, the database
commit, and the rest of the handler. "reply + sender" is what remains of the wall time per
instance (the C-STORE response and storescu reading and sending its next file). The publish to
the broker and the commit that marks instances queued run on the enqueuer thread, off the
acknowledged path, and are listed apart.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

import dicom_node.ingest as ingest_module
import dicom_node.storage as storage_module
from dicom_node.enqueue import Enqueuer
from dicom_node.ingest import Ingestor
from dicom_node.server import Node
from dicom_node.settings import NodeSettings
from dicom_node.storage import InstanceStore

NESTED = ("header parse", "hash", "fsync file wait", "rename + mkdir", "fsync dir", "db commit")
LABELS = {"fsync file wait": "fsync file: wait after hashing"}


class StageClock:
    """Seconds spent per stage, summed over every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.receive_started: dict[str, float] = {}
        self.fragments = 0
        self.fragment_bytes = 0

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.counts[stage] += 1

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)
        return wrapper


@contextlib.contextmanager
def _patched(target: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, replacement)
    try:
        yield
    finally:
        setattr(target, name, original)


def _timed_fsync(clock: StageClock, fsync: Callable[..., None]) -> Callable[..., None]:
    def wrapper(path: Path, directory: bool = False) -> None:
        started = time.perf_counter()
        try:
            fsync(path, directory=directory)
        finally:
            clock.add("fsync dir" if directory else "fsync file", time.perf_counter() - started)
    return wrapper


def _timed_commit(clock: StageClock, commit: Callable[..., Any]) -> Callable[..., Any]:
    """``InstanceStore.commit`` less its directory fsyncs and its wait for the file's fsync
    (which runs on the pool) is the rename and the directories."""
    inner = ("fsync dir", "fsync file wait")

    def wrapper(self: InstanceStore, *args: Any, **kwargs: Any) -> Any:
        before = sum(clock.seconds[stage] for stage in inner)
        started = time.perf_counter()
        try:
            return commit(self, *args, **kwargs)
        finally:
            waited = sum(clock.seconds[stage] for stage in inner) - before
            clock.add("rename + mkdir", time.perf_counter() - started - waited)
    return wrapper


def _timed_sync_soon(clock: StageClock, sync_soon: Callable[..., Any]) -> Callable[..., Any]:
    """The handler's wait for the file's fsync, which runs on the pool while it hashes."""
    def wrapper(self: InstanceStore, path: Path) -> Any:
        future = sync_soon(self, path)
        result = future.result

        def timed_result(timeout: float | None = None) -> Any:
            started = time.perf_counter()
            try:
                return result(timeout)
            finally:
                clock.add("fsync file wait", time.perf_counter() - started)

        future.result = timed_result
        return future
    return wrapper


def _receiving_files(clock: StageClock, make: Callable[..., Any]) -> Callable[..., Any]:
    """The temporary-file factory pynetdicom calls when a C-STORE command has arrived."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle = make(*args, **kwargs)
        clock.receive_started[str(handle.name)] = time.perf_counter()
        write = handle.write

        def counting_write(data: bytes) -> int:
            clock.fragments += 1
            clock.fragment_bytes += len(data)
            return int(write(data))

        handle.write = counting_write
        return handle
    return wrapper


def _timed_ingest(clock: StageClock, ingest: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Ingestor, received: Path, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        begun = clock.receive_started.pop(str(received), None)
        if begun is not None:
            clock.add("receive", started - begun)
        try:
            return ingest(self, received, *args, **kwargs)
        finally:
            clock.add("handler", time.perf_counter() - started)
    return wrapper


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """Timers around each step; ``Node.start`` must already have run (it installs the
    temporary-file factory that the receive timer wraps)."""
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        enter(_patched(dimse_messages, "NamedTemporaryFile",
                       _receiving_files(clock, dimse_messages.NamedTemporaryFile)))
        enter(_patched(ingest_module, "inspect",
                       clock.timed("header parse", ingest_module.inspect)))
        enter(_patched(ingest_module, "sha256_of", clock.timed("hash", ingest_module.sha256_of)))
        enter(_patched(storage_module, "fsync_path",
                       _timed_fsync(clock, storage_module.fsync_path)))
        enter(_patched(InstanceStore, "commit", _timed_commit(clock, InstanceStore.commit)))
        enter(_patched(InstanceStore, "sync_soon",
                       _timed_sync_soon(clock, InstanceStore.sync_soon)))
        enter(_patched(Ingestor, "_record", clock.timed("db commit", Ingestor._record)))
        enter(_patched(Ingestor, "ingest", _timed_ingest(clock, Ingestor.ingest)))
        enter(_patched(Enqueuer, "_publish_each", clock.timed("publish", Enqueuer._publish_each)))
        enter(_patched(Enqueuer, "_mark_queued", clock.timed("mark queued",
                                                             Enqueuer._mark_queued)))
        yield


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def profile_node(env: dict[str, str], send: Callable[[int], float]) -> tuple[float, StageClock]:
    """Run the node in this process under ``env`` (``TRIAGE_*``), time ``send(port)``."""
    clock = StageClock()
    with environment(env):
        node = Node(NodeSettings.from_env())
        node.start()
        try:
            with instrumented(clock):
                seconds = send(node.port)
                deadline = time.monotonic() + 30  # let the enqueuer publish the last ones
                while node.enqueuer is not None and node.enqueuer._pending.qsize() and (
                        time.monotonic() < deadline):
                    time.sleep(0.05)
        finally:
            node.stop()
    return seconds, clock


def breakdown(clock: StageClock, seconds: float, count: int, associations: int) -> list[str]:
    """Lines of ms per instance per stage."""
    per = {stage: 1000 * clock.seconds[stage] / count for stage in clock.seconds}
    nested = sum(per.get(stage, 0.0) for stage in NESTED)
    wall = 1000 * seconds / count
    rows = [("receive (P-DATA to the temporary file)", per.get("receive", 0.0))]
    rows += [(LABELS.get(stage, stage), per.get(stage, 0.0)) for stage in NESTED]
    rows.append(("rest of the handler", per.get("handler", 0.0) - nested))
    lines = [f"{'step (ms per instance)':52} {'ms':>7}"]
    lines += [f"{name:52} {value:7.2f}" for name, value in rows]
    if associations == 1:  # sequential: what is left of the wall time is outside the node
        rest = wall - per.get("receive", 0.0) - per.get("handler", 0.0)
        lines.append(f"{'reply + sender (storescu) + scheduling':52} {rest:7.2f}")
    lines.append(f"{'wall time per instance':52} {wall:7.2f}")
    lines.append(f"{'fsync file (on the pool, while hashing)':52} "
                 f"{per.get('fsync file', 0.0):7.2f}")
    lines.append(f"{'publish (enqueuer thread, after Success)':52} {per.get('publish', 0.0):7.2f}")
    marks = clock.counts.get("mark queued", 0)
    lines.append(f"{'mark queued (enqueuer thread, one commit per window)':52} "
                 f"{per.get('mark queued', 0.0):7.2f}  ({marks} commits for {count} instances)")
    if clock.fragments:
        lines.append(f"P-DATA fragments: {clock.fragments / count:.0f} per instance, "
                     f"{clock.fragment_bytes / clock.fragments / 1024:.0f} KiB each")
    return lines
