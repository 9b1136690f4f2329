"""Decoding a batch in a separate process, so that it runs beside inference.

JPEG 2000 (Pillow's OpenJPEG decoder reads the file through Python) and JPEG-LS (pyjpegls)
decode with the GIL held: two threads decoding take as long as one doing both, and a decoding
thread stalls inference, which needs the GIL between torch ops (measured for issue 16, docs/
benchmarks.md, "End to end"). Live scoring's decode-ahead thread therefore hands the images of
the next batch to one decoding process and waits for the tensors with the GIL released.

The process is started (``spawn``: nothing of torch's thread state is inherited) on first use
in each scoring process and kept for the next batches; it runs torch with one thread. It
decodes with :func:`preprocess_file`, the picklable form of ``Ensemble.preprocess`` (training's
code path, the same two calls). A model that does not say how it preprocesses (no
``config``), or a process that can't be started or died, means decoding in the calling thread:
slower, never lost.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from training.preprocessing import PreprocessConfig, load_unit_image, to_model_tensor
from worker.score.batch import BatchModel, DecodedBatch, ImageRef, Preprocess, decode_batch

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pool: tuple[int, ProcessPoolExecutor] | None = None  # (pid of the owner, pool)
_unavailable = False


def preprocess_file(config: PreprocessConfig, path: Path) -> torch.Tensor:
    """``Ensemble.preprocess`` as a module function: one file to its model tensor."""
    unit = load_unit_image(path, size=config.size, resize=config.resize)
    return to_model_tensor(unit, **config.to_dict())


def portable_preprocess(model: BatchModel) -> Preprocess | None:
    """A picklable stand-in for ``model.preprocess`` (``None``: the model has no ``config``)."""
    config = getattr(model, "config", None)
    if not isinstance(config, PreprocessConfig):
        return None
    return functools.partial(preprocess_file, config)


def _one_thread() -> None:
    torch.set_num_threads(1)  # the scoring process's torch threads have the other cores


def _decoder() -> ProcessPoolExecutor | None:
    """This process's decoding process (``None`` if none can be had here)."""
    global _pool
    with _lock:
        if _unavailable:
            return None
        if _pool is None or _pool[0] != os.getpid():  # none yet, or inherited over a fork
            context = multiprocessing.get_context("spawn")
            _pool = (os.getpid(), ProcessPoolExecutor(max_workers=1, mp_context=context,
                                                      initializer=_one_thread))
        return _pool[1]


def _give_up(exc: BaseException) -> None:
    global _pool, _unavailable
    with _lock:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[1].shutdown(wait=False, cancel_futures=True)
        _pool = None
        if not isinstance(exc, BrokenProcessPool):  # can't start here: don't try again
            _unavailable = True
    logger.warning("decoding process unavailable (%s: %s); decoding in the scoring process",
                   type(exc).__name__, exc)


def _ready() -> int:
    return os.getpid()


def start_decoder(model: BatchModel) -> Future[int] | None:
    """Start the decoding process now, if it will be used, without waiting for it (it takes a
    few seconds to import torch): the first batch's predict hides that."""
    pool = _decoder() if portable_preprocess(model) is not None else None
    if pool is None:
        return None
    try:
        return pool.submit(_ready)
    except (BrokenProcessPool, OSError, RuntimeError, AssertionError) as exc:
        _give_up(exc)
        return None


def decode_ahead(refs: Sequence[ImageRef], model: BatchModel) -> DecodedBatch:
    """Decode ``refs`` in the decoding process; in this thread when that can't be done."""
    preprocess = portable_preprocess(model)
    pool = _decoder() if preprocess is not None else None
    if pool is not None and preprocess is not None:
        try:
            return pool.submit(decode_batch, list(refs), preprocess).result()
        except (BrokenProcessPool, OSError, RuntimeError, AssertionError) as exc:
            _give_up(exc)  # e.g. the process died, or processes can't be started here
    return decode_batch(refs, model.preprocess)


def decoder_pid() -> int | None:
    """The pid of this process's decoding process, if one is running (for tests)."""
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            return None
        processes = getattr(_pool[1], "_processes", None) or {}
        return next(iter(processes), None)
