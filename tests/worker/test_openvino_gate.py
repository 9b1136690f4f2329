"""Issue 11 on OpenVINO: the compiled graph's second output carries the gate's pooled stage
features, so the gate reads the scoring pass itself (no second, fp32 torch pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.conftest import load_cpu
from tests.worker.gate_support import CHEST_FILES, DENTAL, HIP, build_gated_ensemble
from training.ood import features_and_logits
from worker.score import ensemble as ensemble_module
from worker.score.cam import fold_mean_cam
from worker.score.ensemble import FoldRunner


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return build_gated_ensemble(tmp_path_factory.mktemp("ov-gated") / "model", shared_data)


@pytest.fixture(scope="module")
def batch(gated: Path, shared_dicom: Path) -> torch.Tensor:
    exact = load_cpu(gated)
    return torch.stack([exact.preprocess(shared_dicom / name)
                        for name in (CHEST_FILES[0], CHEST_FILES[1], DENTAL, HIP)])


def test_the_graph_returns_the_stage_features_of_its_own_pass(
        gated: Path, batch: torch.Tensor, tmp_path: Path) -> None:
    compiled = load_cpu(gated, backend="openvino", openvino_cache_dir=tmp_path)
    assert compiled.runner is not None
    probs, features, cams = compiled.runner(batch)
    assert probs.shape == (2, 4)
    exact = load_cpu(gated)
    with torch.inference_mode():
        reference = [features_and_logits(m, batch)[0] for m in exact.models]
        exact_pass = exact.predict(batch)
    assert features is not None and len(features) == len(reference) == 2
    for ours, theirs in zip(features, reference, strict=True):
        assert ours.shape == (4, 3840)
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    # the third output: each fold's Grad-CAM, as the torch pass computes it
    assert cams is not None and len(cams) == 2
    assert exact_pass.cams is not None and exact_pass.cams.shape[0] == 4
    assert np.allclose(fold_mean_cam(cams), exact_pass.cams, atol=1e-3)


def test_openvino_gate_verdicts_equal_torch_without_a_torch_pass(
        gated: Path, batch: torch.Tensor, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    exact = load_cpu(gated).predict(batch)
    compiled = load_cpu(gated, backend="openvino", openvino_cache_dir=tmp_path,
                        exact_margin=0.0)  # threshold 0: nothing is near it anyway
    passes: list[int] = []
    torch_pass = ensemble_module._torch_runner

    def counted(*args: Any, **kwargs: Any) -> FoldRunner:
        run = torch_pass(*args, **kwargs)
        return lambda x: (passes.append(len(x)), run(x))[1]  # the real pass, counted

    monkeypatch.setattr(ensemble_module, "_torch_runner", counted)
    result = compiled.predict(batch)
    assert passes == []  # the gate read the graph's own features
    assert result.not_assessable == exact.not_assessable
    assert exact.not_assessable[2:] == (True, True)  # the dental and hip CR are refused
    assert result.gate_scores == pytest.approx(exact.gate_scores, rel=1e-3)
