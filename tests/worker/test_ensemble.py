"""The ensemble: manifest and hashes checked, any fold count, training's preprocessing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.support import dicomgen
from tests.worker.conftest import load_cpu
from training.errors import TrainingError
from training.manifest import load_manifest
from training.preprocessing import preprocess
from worker.report.identity import model_identity
from worker.score.ensemble import Ensemble, EnsembleError, resolve_device
from worker.settings import InferenceSettings


def test_three_folds_predict_a_batch(three_fold_ensemble: Path, tmp_path: Path) -> None:
    ensemble = load_cpu(three_fold_ensemble)
    assert len(ensemble.models) == 3
    paths = [dicomgen.write(dicomgen.radiograph(seed=i), tmp_path / f"{i}.dcm") for i in range(4)]
    batch = torch.stack([ensemble.preprocess(p) for p in paths])
    assert batch.shape == (4, 3, 64, 64)
    out = ensemble.predict(batch)
    assert len(out.mean) == len(out.std) == len(out.folds) == 4
    for mean, std, folds in zip(out.mean, out.std, out.folds, strict=True):
        assert len(folds) == 3
        assert all(0.0 <= p <= 1.0 for p in folds)
        assert mean == pytest.approx(sum(folds) / 3, abs=1e-6)
        assert std == pytest.approx(float(torch.tensor(folds).std(unbiased=False)), abs=1e-6)
    # Batching doesn't change an image's result.
    single = ensemble.predict(batch[1:2])
    assert single.mean[0] == pytest.approx(out.mean[1], abs=1e-5)


def test_worker_uses_trainings_preprocessing(tiny_ensemble: Path, tmp_path: Path) -> None:
    ensemble = load_cpu(tiny_ensemble)
    path = dicomgen.write(dicomgen.radiograph(seed=3), tmp_path / "x.dcm")
    expected = preprocess(path, load_manifest(tiny_ensemble).preprocess_config())
    assert torch.equal(ensemble.preprocess(path), expected)


def test_a_changed_fold_file_is_refused(tiny_ensemble: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_ensemble, tmp_path / "model")
    fold = copy / "fold_01.safetensors"
    data = bytearray(fold.read_bytes())
    data[-1] ^= 0xFF
    fold.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=r"fold_01.safetensors does not match its sha256"):
        load_cpu(copy)


def test_missing_manifest_and_device(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"no ensemble\.json"):
        load_cpu(tmp_path)
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(EnsembleError, match="no CUDA device"):
            resolve_device("cuda")


def test_model_identity_comes_from_the_manifest(tiny_ensemble: Path) -> None:
    manifest = load_manifest(tiny_ensemble)
    identity = model_identity(manifest)
    assert identity.algorithm_name == "tiny test ensemble"
    assert identity.version == manifest.model_version
    assert identity.not_for_clinical_use is True
    assert len(identity.ensemble_hash) == 64


def test_bf16_inference_close_to_fp32(tiny_ensemble: Path) -> None:
    torch.manual_seed(0)
    batch = torch.randn(3, 3, 64, 64)
    exact = load_cpu(tiny_ensemble).predict(batch)
    fast = load_cpu(tiny_ensemble, precision="bf16").predict(batch)
    assert max(abs(a - b) for a, b in zip(exact.mean, fast.mean, strict=True)) < 0.05


def test_unknown_precision_is_refused(tiny_ensemble: Path) -> None:
    with pytest.raises(EnsembleError, match="'int3'"):
        Ensemble.load(tiny_ensemble, InferenceSettings(precision="int3"))


def test_openvino_backend_matches_torch(tiny_ensemble: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    batch = torch.randn(4, 3, 64, 64)
    reference = load_cpu(tiny_ensemble).predict(batch)
    cache = tmp_path / "ov"
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 0.05)):  # bf16 reads the cached graph
        compiled = load_cpu(tiny_ensemble, precision=precision,
                            backend="openvino", openvino_cache_dir=cache)
        assert compiled.runner is not None
        result = compiled.predict(batch)
        assert max(abs(a - b) for a, b in zip(reference.mean, result.mean, strict=True)) < (
            tolerance), precision
        assert len(list(cache.glob("*.xml"))) == 1


def test_images_near_the_threshold_are_decided_in_fp32(tiny_ensemble: Path,
                                                       tmp_path: Path) -> None:
    import json

    torch.manual_seed(2)
    batch = torch.randn(3, 3, 64, 64)
    exact = load_cpu(tiny_ensemble).predict(batch)
    near = tmp_path / "near"
    shutil.copytree(tiny_ensemble, near)
    manifest = json.loads((near / "ensemble.json").read_text())
    manifest["threshold"] = exact.mean[0] + 1e-5  # image 0 sits on the decision boundary
    (near / "ensemble.json").write_text(json.dumps(manifest))
    fast = load_cpu(near, precision="bf16", exact_margin=0.02)
    result = fast.predict(batch)
    assert result.mean[0] == exact.mean[0]  # rescored by the fp32 models: bit-identical
    rough = load_cpu(near, precision="bf16", exact_margin=0.0)
    assert rough.predict(batch).mean[0] != exact.mean[0]  # the bf16 path alone differs
