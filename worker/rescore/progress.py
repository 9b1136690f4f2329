"""Progress of a re-scoring run: a rich bar with ETA on a terminal, log lines for cron."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

logger = logging.getLogger(__name__)


class Progress:
    """Counts images done out of ``total``; the bar is drawn only when stderr is a terminal,
    and a line with rate and ETA is logged every ``log_every_s`` seconds either way."""

    def __init__(self, total: int, description: str, log_every_s: float = 30.0) -> None:
        self.total = total
        self.done = 0
        self.log_every_s = log_every_s
        self._started = time.monotonic()
        self._logged = self._started
        console = Console(file=sys.stderr)
        self._bar = RichProgress(
            TextColumn(description), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, disable=not console.is_terminal)
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        self._bar.start()
        self._task = self._bar.add_task("", total=self.total, rate="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.stop()
        if exc_type is None and self.total:
            logger.info("%d/%d images in %.1f s (%.2f images/s)", self.done, self.total,
                        self.elapsed, self.rate)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (``None`` before the first image)."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def advance(self, count: int) -> None:
        self.done += count
        if self._task is not None:
            self._bar.update(self._task, advance=count, rate=f"{self.rate:.2f} img/s")
        now = time.monotonic()
        if now - self._logged >= self.log_every_s:
            self._logged = now
            eta = self.eta_s()
            logger.info("progress %d/%d (%.2f images/s, ETA %s)", self.done, self.total,
                        self.rate, "?" if eta is None else f"{eta:.0f} s")
