"""Decoding a batch in a separate process, so that it runs beside inference.

JPEG 2000 (Pillow's OpenJPEG decoder reads the file through Python) and JPEG-LS (pyjpegls)
decode with the GIL held: two threads decoding take as long as one doing both, and a decoding
thread stalls inference, which needs the GIL between torch ops (measured for issue 16, docs/
benchmarks.md, "End to end"). Live scoring's decode-ahead thread therefore hands the images of
the next batch to a decoding process and waits for the tensors with the GIL released.

The decoding process is ``python -m worker.score.ahead``, started on first use in each scoring
process and kept for the next batches: a plain child on pipes, not ``multiprocessing`` (Celery's
prefork processes may not start those). It reads requests (pickled image references and
preprocessing settings, each prefixed by its length) from stdin and answers each with the
pickled :class:`~worker.score.batch.DecodedBatch` on stdout; it runs torch with one thread and
ends when stdin closes, which happens however the scoring process ends. It decodes with
:func:`preprocess_file`, the picklable form of ``Ensemble.preprocess`` (training's code path,
the same two calls). A model that does not say how it preprocesses (no ``config``), or a
decoding process that can't be started or died, means decoding in the calling thread: slower,
never lost.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from training.preprocessing import PreprocessConfig, load_unit_image, to_model_tensor
from worker.score.batch import BatchModel, DecodedBatch, ImageRef, Preprocess, decode_batch

logger = logging.getLogger(__name__)
_LENGTH = struct.Struct(">Q")


class DecoderGoneError(RuntimeError):
    """The decoding process ended or answered nonsense."""


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


def _send(stream: IO[bytes], value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the other end closed the pipe")
    (length,) = _LENGTH.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise EOFError("the other end closed the pipe mid-message")
    return pickle.loads(payload)  # our own process on the other end of a private pipe


class DecodingProcess:
    """One decoding child of this scoring process; one request at a time."""

    def __init__(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._child.pid

    def alive(self) -> bool:
        return self._child.poll() is None

    def decode(self, refs: Sequence[ImageRef], preprocess: Preprocess) -> DecodedBatch:
        assert self._child.stdin is not None and self._child.stdout is not None
        with self._lock:
            try:
                _send(self._child.stdin, (list(refs), preprocess))
                answer = _receive(self._child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                raise DecoderGoneError(f"decoding process {self.pid}: {exc}") from exc
        if not isinstance(answer, DecodedBatch):
            raise DecoderGoneError(f"decoding process {self.pid} answered {type(answer)}")
        return answer


_lock = threading.Lock()
_decoder: tuple[int, DecodingProcess] | None = None  # (pid of the owner, its child)


def _decoding_process() -> DecodingProcess:
    """This process's decoding child, started if there is none (or it ended)."""
    global _decoder
    with _lock:
        if _decoder is None or _decoder[0] != os.getpid() or not _decoder[1].alive():
            _decoder = (os.getpid(), DecodingProcess())  # a fork's inherited one isn't ours
        return _decoder[1]


def start_decoder(model: BatchModel) -> None:
    """Start the decoding process now, if it will be used, without waiting for it (it takes a
    few seconds to import torch): the first batch's predict hides that."""
    if portable_preprocess(model) is None:
        return
    try:
        _decoding_process()
    except OSError as exc:
        logger.warning("can't start the decoding process (%s); decoding in this process", exc)


def decode_ahead(refs: Sequence[ImageRef], model: BatchModel) -> DecodedBatch:
    """Decode ``refs`` in the decoding process; in this thread when that can't be done."""
    preprocess = portable_preprocess(model)
    if preprocess is not None:
        try:
            return _decoding_process().decode(refs, preprocess)
        except (DecoderGoneError, OSError) as exc:
            logger.warning("decoding process unavailable (%s); decoding this batch here", exc)
    return decode_batch(refs, model.preprocess)


def decoder_pid() -> int | None:
    """The pid of this process's decoding process, if one is running (for tests)."""
    with _lock:
        if _decoder is None or _decoder[0] != os.getpid() or not _decoder[1].alive():
            return None
        return _decoder[1].pid


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The decoding process: decode each request until the scoring process closes the pipe."""
    torch.set_num_threads(1)  # the scoring process's torch threads have the other cores
    while True:
        try:
            refs, preprocess = _receive(requests)
        except EOFError:
            return
        _send(answers, decode_batch(refs, preprocess))  # image errors are reasons, not raises


def main() -> None:
    """Answers go to the pipe that was stdout; anything a library prints goes to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
