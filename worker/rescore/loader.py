"""Decoding ahead of the model for local re-scoring.

With ``TRIAGE_RESCORE_WORKERS`` 0 (the default on 2 cores), :func:`decoded_batches` decodes
the next batch in the live worker's decoding process (:mod:`worker.score.ahead`) while the
current one is predicted, one batch ahead, as live scoring does: on 2 cores a DataLoader
worker, two batches ahead, took CPU from inference (bench/rescore.py: 0.60 of the live rate
with one DataLoader process, 0.97 decoding in the run's own process, docs/benchmarks.md).
With 1 or more, a torch DataLoader over the run's images:

Decoding and preprocessing run in DataLoader worker processes with training's own
``preprocess`` and the manifest's :class:`PreprocessConfig` (never the models), so the next
batches are decoded while the ensemble runs on the current one. Each item is decoded by
:func:`worker.score.batch.decode` and each batch stacked by ``collate``: the same functions
live scoring uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from training.preprocessing import PreprocessConfig, preprocess
from worker.score.ahead import decode_ahead, start_decoder
from worker.score.batch import (
    BatchModel,
    Decoded,
    DecodedBatch,
    ImageRef,
    collate,
    decode,
    decode_batch,
)


class RescoreDataset(Dataset[Decoded]):
    """The images of a run; ``__getitem__`` decodes and preprocesses one of them."""

    def __init__(self, refs: Sequence[ImageRef], config: PreprocessConfig) -> None:
        self.refs = list(refs)
        self.config = config

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Decoded:
        return decode(self.refs[index], self._preprocess)

    def _preprocess(self, path: Path) -> torch.Tensor:
        return preprocess(path, self.config)


def _one_thread(_worker_id: int = 0) -> None:
    torch.set_num_threads(1)  # decoding is per process; leave the cores to the model


def make_loader(refs: Sequence[ImageRef], config: PreprocessConfig, *, batch_size: int,
                workers: int, pin_memory: bool = False) -> DataLoader[Decoded]:
    """Batches (``DecodedBatch``) of decoded images in order, ``workers`` processes ahead."""
    return DataLoader(
        RescoreDataset(refs, config), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None, persistent_workers=False,
    )


def decoded_batches(refs: Sequence[ImageRef], model: BatchModel, *, batch_size: int,
                    workers: int, pin_memory: bool = False) -> Iterator[DecodedBatch]:
    """The run's images in decoded batches, in order, the next one decoded meanwhile: by
    ``workers`` DataLoader processes, or with 0 by the decoding process, one batch ahead (the
    first batch is decoded here while that process starts)."""
    config = getattr(model, "config", None)
    if workers > 0 and isinstance(config, PreprocessConfig):
        yield from make_loader(refs, config, batch_size=batch_size, workers=workers,
                               pin_memory=pin_memory)
        return
    chunks = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    if not chunks:
        return
    current = decode_batch(chunks[0], model.preprocess)
    if len(chunks) > 1:
        start_decoder(model)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescore-ahead",
                            initializer=_one_thread) as ahead:
        for following in chunks[1:]:
            upcoming = ahead.submit(decode_ahead, following, model)
            yield current
            current = upcoming.result()
    yield current
