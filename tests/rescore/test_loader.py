"""Local re-scoring decodes the next batch while the current one is predicted: by the live
worker's decoding process (``--workers 0``, the default on 2 cores) or DataLoader processes.
Both give the same batches, in order, failures included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.conftest import build_ensemble, load_cpu
from worker.rescore.loader import decoded_batches
from worker.score.ahead import decoder_pid
from worker.score.batch import ImageRef


@pytest.mark.parametrize("workers", [0, 1])
def test_decoded_batches_keep_order_and_failures(tmp_path: Path, shared_data: Path,
                                                 workers: int) -> None:
    model = load_cpu(build_ensemble(tmp_path / "model", folds=1))
    files = sorted((shared_data / "cxr").glob("*/*.png"))[::60][:5]
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    refs = [ImageRef(i, str(path), f"{i:064d}") for i, path in enumerate(files)]
    refs.insert(3, ImageRef(99, str(broken), "f" * 64))
    batches = list(decoded_batches(refs, model, batch_size=2, workers=workers))
    per_batch = [sorted([r.instance_id for r in b.refs] + [r.instance_id for r, _ in b.failures])
                 for b in batches]
    assert per_batch == [[0, 1], [2, 99], [3, 4]]  # in order, two per batch
    failed = [ref.instance_id for b in batches for ref, _ in b.failures]
    assert failed == [99]  # a bad file is a recorded failure, never an exception
    decoded = torch.cat([b.tensors for b in batches if b.tensors is not None])
    expected = torch.stack([model.preprocess(path) for path in files])
    assert torch.equal(decoded, expected)  # the same preprocessing, whoever decodes
    if workers == 0:  # batches after the first came from the live decoding process
        assert decoder_pid() is not None
    assert list(decoded_batches([], model, batch_size=2, workers=workers)) == []
