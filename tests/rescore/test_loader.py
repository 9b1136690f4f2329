"""Local re-scoring decodes the next batch while the current one is predicted: by the live
worker's decoding process (``--workers 0``, the default on 2 cores) or DataLoader processes.
Both give the same batches, in order, failures included.

The DataLoader case runs in a fresh interpreter, as ``cxr-triage rescore --workers N`` does: a
process never runs both (this test process has started the live decoding process and OpenVINO
by then, and a DataLoader forked beside them crashed the test process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.worker.conftest import build_ensemble, load_cpu
from worker.rescore.loader import decoded_batches
from worker.score.ahead import decoder_pid
from worker.score.batch import ImageRef

ROOT = Path(__file__).resolve().parents[2]


def check_batches(model_dir: Path, cxr: Path, broken: Path, workers: int) -> None:
    """Decode five development PNGs and one broken file in batches of two; assert order,
    failures and tensors equal to the model's own preprocessing."""
    model = load_cpu(model_dir)
    files = sorted(cxr.glob("*/*.png"))[::60][:5]
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
    assert list(decoded_batches([], model, batch_size=2, workers=workers)) == []


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    return build_ensemble(tmp_path / "model", folds=1), broken


def test_the_decoding_process_decodes_ahead(tmp_path: Path, shared_data: Path) -> None:
    model_dir, broken = _inputs(tmp_path)
    check_batches(model_dir, shared_data / "cxr", broken, workers=0)
    assert decoder_pid() is not None  # batches after the first came from that process


def test_dataloader_processes_decode_the_same(tmp_path: Path, shared_data: Path) -> None:
    model_dir, broken = _inputs(tmp_path)
    code = ("import sys; from pathlib import Path; "
            "from tests.rescore.test_loader import check_batches; "
            "check_batches(*(Path(a) for a in sys.argv[1:4]), workers=1); print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir), str(shared_data / "cxr"),
                           str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
