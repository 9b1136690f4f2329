"""Decoding ahead of the model for local re-scoring: a torch DataLoader over the run's images.

Decoding and preprocessing run in DataLoader worker processes with training's own
``preprocess`` and the manifest's :class:`PreprocessConfig` (never the models), so the next
batches are decoded while the ensemble runs on the current one. Each item is decoded by
:func:`worker.score.batch.decode` and each batch stacked by ``collate``: the same functions
live scoring uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from training.preprocessing import PreprocessConfig, preprocess
from worker.score.batch import Decoded, ImageRef, collate, decode


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


def _one_thread(_worker_id: int) -> None:
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
