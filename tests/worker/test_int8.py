"""int8 through NNCF: built from real training images, cached per model version, decisions
re-checked in fp32 near the threshold, gate features exported by the graph."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from common.hardware import detect
from cxr_triage.cli import main
from tests.worker.conftest import build_ensemble, load_cpu
from tests.worker.int8_support import CALIBRATION_IMAGES, quantized_ensemble, set_threshold
from training.manifest import load_manifest
from training.ood import features_and_logits
from training.preprocessing import PreprocessConfig, preprocess
from worker.score.int8 import (
    ERROR_SAFETY,
    _stage_of,
    compile_int8,
    kept_convolutions,
    quantize_ensemble,
    quantize_graph,
    rest_precision,
)
from worker.score.openvino import OpenVinoError
from worker.score.precision import int8_graph, weights_digest


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
              ) -> tuple[Path, Path]:
    model_dir, cache, graph = quantized_ensemble(tmp_path_factory.mktemp("int8"), shared_data)
    assert graph.ready, graph.reason
    return model_dir, cache


@pytest.fixture(scope="module")
def real_batch(quantized: tuple[Path, Path], shared_data: Path) -> torch.Tensor:
    model = load_cpu(quantized[0])
    files = sorted((shared_data / "cxr").glob("*/*.png"))[::40][:6]
    return torch.stack([model.preprocess(path) for path in files])


def test_the_graph_records_its_weights_and_calibration_source(
        quantized: tuple[Path, Path], shared_data: Path) -> None:
    model_dir, cache = quantized
    manifest = load_manifest(model_dir)
    hashes = [f.sha256 for f in manifest.folds]
    graph = int8_graph(cache, manifest.model_version, manifest.input_size, hashes)
    meta = json.loads(graph.path.with_suffix(".json").read_text())
    assert graph.ready and manifest.model_version in graph.path.name
    assert meta["weights_sha256"] == weights_digest(hashes)
    calibration = meta["calibration"]
    assert calibration["source"] == str((shared_data / "cxr").resolve())
    assert calibration["images"] == CALIBRATION_IMAGES == len(calibration["files"])
    assert calibration["per_class"] == {"covid": 6, "normal": 6}
    assert all(Path(f).is_file() for f in calibration["files"])
    # a retrained model (other fold hashes) does not use it; quantize then rebuilds
    assert not int8_graph(cache, manifest.model_version, manifest.input_size,
                          [*hashes[:-1], "0" * 64]).ready
    again = quantize_ensemble(model_dir, shared_data / "cxr", cache, images=CALIBRATION_IMAGES)
    assert again.ready and json.loads(graph.path.with_suffix(".json").read_text()) == meta


def test_the_int8_graph_exports_the_gate_features(quantized: tuple[Path, Path],
                                                  real_batch: torch.Tensor) -> None:
    model_dir, cache = quantized
    manifest = load_manifest(model_dir)
    graph = int8_graph(cache, manifest.model_version, manifest.input_size,
                       [f.sha256 for f in manifest.folds])
    probs, features, cams = compile_int8(graph, threads=1)(real_batch)
    exact = load_cpu(model_dir)
    with torch.inference_mode():
        reference = [features_and_logits(m, real_batch)[0] for m in exact.models]
    assert probs.shape == (2, len(real_batch))
    assert [f.shape for f in features] == [r.shape for r in reference] == [
        (len(real_batch), 3840)] * 2
    for ours, theirs in zip(features, reference, strict=True):  # int8: close, not equal
        assert torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1] > 0.95
    assert cams is not None and len(cams) == 2  # the Grad-CAM output survives quantization
    assert cams[0].shape[0] == len(real_batch)


def test_int8_decisions_near_the_threshold_are_rechecked_in_fp32(
        quantized: tuple[Path, Path], real_batch: torch.Tensor, tmp_path: Path) -> None:
    model_dir, cache = quantized
    exact = load_cpu(model_dir).predict(real_batch).mean
    rough = load_cpu(model_dir, precision="int8", backend="openvino", openvino_cache_dir=cache,
                     exact_margin=0.0)
    assert (rough.precision, rough.backend) == ("int8", "openvino")
    assert rough.runner is not None
    with torch.inference_mode():
        raw = rough.runner(real_batch)[0].mean(dim=0).tolist()  # int8 alone, no re-check
    assert abs(raw[0] - exact[0]) > 1e-5  # int8 alone gives image 0 another probability
    # the threshold right between the two: int8 alone decides image 0 the other way
    near = tmp_path / "near"
    shutil.copytree(model_dir, near)
    threshold = (raw[0] + exact[0]) / 2
    set_threshold(near, threshold)
    assert (raw[0] >= threshold) != (exact[0] >= threshold)
    checked = load_cpu(near, precision="int8", backend="openvino", openvino_cache_dir=cache,
                       exact_margin=0.02)
    result = checked.predict(real_batch).mean
    assert checked.rescored >= 1  # image 0 (and any other this close) went to fp32
    assert result[0] == pytest.approx(exact[0], abs=1e-5)  # the fp32 models scored it
    assert [m >= threshold for m in result] == [m >= threshold for m in exact]


def test_the_build_measures_the_int8_error_and_the_path_rechecks_within_it(
        quantized: tuple[Path, Path], real_batch: torch.Tensor) -> None:
    model_dir, cache = quantized
    manifest = load_manifest(model_dir)
    graph = int8_graph(cache, manifest.model_version, manifest.input_size,
                       [f.sha256 for f in manifest.folds])
    error = graph.error
    assert error is not None and error.images > 0 and error.max_dp > 0  # int8 is not fp32
    assert error.gate_deviation is None  # this ensemble has no image gate
    assert error.exact_margin == pytest.approx(max(0.02, ERROR_SAFETY * error.max_dp), abs=1e-5)
    assert 0.0 <= error.rescore_share <= 1.0
    # what the default margins (bf16, OpenVINO fp32) would re-check, for auto's timing
    assert error.default_share is not None and 0.0 <= error.default_share <= 1.0
    meta = json.loads(graph.path.with_suffix(".json").read_text())
    check = set(meta["error"]) & {"check_images", "against"}
    assert check == {"check_images", "against"}
    # the loaded int8 path re-checks within the measured margin, even when set lower
    rough = load_cpu(model_dir, precision="int8", backend="openvino", openvino_cache_dir=cache,
                     exact_margin=0.0)
    assert rough.exact_margin == pytest.approx(error.exact_margin)
    with torch.inference_mode():
        int8_means = rough.runner(real_batch)[0].mean(dim=0) if rough.runner else None
    assert int8_means is not None
    exact = load_cpu(model_dir).predict(real_batch).mean
    result = rough.predict(real_batch).mean
    near = (int8_means - rough.threshold).abs() < error.exact_margin
    assert rough.rescored == int(near.sum())
    for i in near.nonzero().flatten().tolist():  # those images carry the fp32 probability
        assert result[i] == pytest.approx(exact[i], abs=1e-5)


def test_model_quantize_command_keeps_a_current_graph(
        quantized: tuple[Path, Path], shared_data: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, cache = quantized
    monkeypatch.setenv("TRIAGE_OPENVINO_CACHE_DIR", str(cache))
    argv = ["model", "quantize", "--model", str(model_dir), "--data", str(shared_data / "cxr"),
            "--images", str(CALIBRATION_IMAGES)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"is built ({CALIBRATION_IMAGES} calibration images)" in out and str(cache) in out
    assert "int8 against fp32 on" in out and "check images" in out


def _stem_and_graph() -> tuple[object, list[object]]:
    from torchvision.models import resnet50

    from worker.score.openvino import convert_ensemble

    torch.manual_seed(0)
    graph = convert_ensemble([resnet50(num_classes=2).eval()], positive=1, size=64)
    return graph, [op for op in graph.get_ops() if op.get_type_name() == "Convolution"]


def test_each_convolution_is_mapped_to_its_resnet_stage() -> None:
    graph, convolutions = _stem_and_graph()
    stages = Counter(_stage_of(op) for op in convolutions)
    # ResNet-50: the stem convolution; 3, 4, 6, 3 bottlenecks of 3 each, plus one
    # downsample convolution per stage
    assert stages == {"stem": 1, "layer1": 10, "layer2": 13, "layer3": 19, "layer4": 10}
    assert len(kept_convolutions(graph, ("stem", "layer1"))) == 11
    assert kept_convolutions(graph, ()) == []
    with pytest.raises(OpenVinoError, match="unknown stage"):
        kept_convolutions(graph, ("layer5",))


def test_kept_stages_stay_in_floating_point(shared_data: Path) -> None:
    graph, _ = _stem_and_graph()
    files = sorted((shared_data / "cxr").glob("*/*.png"))[::50][:4]
    config = PreprocessConfig(size=64)
    tensors = [preprocess(path, config).unsqueeze(0).numpy() for path in files]

    def quantized_weights(keep: tuple[str, ...]) -> dict[str | None, int]:
        """Per stage, how many convolutions have int8 weights (decompressed by a Multiply,
        where a floating-point convolution reads its Constant directly)."""
        counts: Counter[str | None] = Counter()
        for op in quantize_graph(graph, tensors, keep).get_ops():
            if op.get_type_name() == "Convolution":
                source = op.input(1).get_source_output().get_node()
                counts[_stage_of(op)] += source.get_type_name() != "Constant"
        return dict(counts)

    everything = quantized_weights(())
    assert everything["stem"] == 1 and everything["layer1"] == 10
    kept = quantized_weights(("stem", "layer1"))
    assert kept["stem"] == 0 and kept["layer1"] == 0
    assert kept["layer2"] == everything["layer2"] > 0  # the rest is still int8


def test_quantize_keep_is_recorded_and_a_different_keep_rebuilds(
        tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = build_ensemble(tmp_path / "model", folds=1, seed=3)
    cache = tmp_path / "ov"
    monkeypatch.setenv("TRIAGE_OPENVINO_CACHE_DIR", str(cache))
    argv = ["model", "quantize", "--model", str(model_dir), "--data", str(shared_data / "cxr"),
            "--images", "4"]
    assert main([*argv, "--keep", "stem"]) == 0
    manifest = load_manifest(model_dir)
    graph = int8_graph(cache, manifest.model_version, manifest.input_size,
                       [f.sha256 for f in manifest.folds])
    meta = json.loads(graph.path.with_suffix(".json").read_text())
    rest = rest_precision(detect(light=True))  # bf16 with AMX, else fp32
    assert meta["kept"] == ["stem"] and f"stem kept in {rest}" in meta["method"]
    assert meta["ranges"] == "minmax" and meta["rest_precision"] == rest == graph.rest
    assert main([*argv, "--keep", "none"]) == 0  # another scope: rebuilt, not kept
    assert json.loads(graph.path.with_suffix(".json").read_text())["kept"] == []
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--keep", "layer9"])
    assert exit_info.value.code == 2
    assert "unknown stage(s) layer9" in capsys.readouterr().err
