"""Progress bars (rich) for decoding and training: fold, epoch, loss, accuracy and ETA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """A rich ``Progress`` with one bar for the whole run and one for the current epoch."""

    def __init__(self, disable: bool = False) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=disable,
        )
        self._run: TaskID | None = None

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start_run(self, epochs_to_train: int) -> None:
        """Overall bar over the epochs still to train (finished folds are not counted)."""
        self._run = self._progress.add_task("all folds", total=epochs_to_train, stats="")

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar advanced by calling the yielded function with the number done."""
        task = self._progress.add_task(description, total=total, stats="")

        def update(done: int) -> None:
            self._progress.update(task, completed=done)

        try:
            yield update
        finally:
            self._progress.remove_task(task)

    @contextmanager
    def epoch(self, fold: int, folds: int, epoch: int, epochs: int,
              steps: int) -> Iterator[Callable[[float, float], None]]:
        """Bar for one epoch; the yielded ``step(loss, accuracy)`` advances it by one batch."""
        task = self._progress.add_task(
            f"fold {fold + 1}/{folds} epoch {epoch + 1}/{epochs}", total=steps, stats="")

        def step(loss: float, accuracy: float) -> None:
            self._progress.update(task, advance=1, stats=f"loss {loss:.4f} acc {accuracy:.3f}")

        try:
            yield step
        finally:
            self._progress.remove_task(task)
            if self._run is not None:
                self._progress.update(self._run, advance=1)
