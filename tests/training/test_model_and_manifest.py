"""Model construction and weights, fold files, and the ensemble manifest round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.errors import TrainingError
from training.manifest import (
    EnsembleManifest,
    FoldEntry,
    load_manifest,
    model_version,
    write_manifest,
)
from training.model import (
    build_resnet50,
    imagenet_weights_path,
    load_fold_model,
    save_fold_model,
)
from training.preprocessing import PreprocessConfig


def test_missing_imagenet_weights_says_how_to_get_them(tmp_path: Path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        expected = imagenet_weights_path()
        assert expected == tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
        with pytest.raises(TrainingError) as info:
            build_resnet50(weights="imagenet")
    finally:
        torch.hub.set_dir(old)
    message = str(info.value)
    assert str(expected) in message and "--weights PATH" in message and "download" in message


def test_weights_path_loads_backbone_and_replaces_1000_class_head(tmp_path: Path) -> None:
    source = build_resnet50(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "r50.pth")
    model = build_resnet50(num_classes=2, weights=tmp_path / "r50.pth")
    assert model.fc.out_features == 2
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    torch.save({"something": torch.zeros(3)}, tmp_path / "junk.pth")
    with pytest.raises(TrainingError, match="not a ResNet-50 state dict"):
        build_resnet50(weights=tmp_path / "junk.pth")
    with pytest.raises(TrainingError, match="does not exist"):
        build_resnet50(weights=tmp_path / "absent.pth")


def test_fold_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_resnet50().eval()
    save_fold_model(model, tmp_path / "fold_00.safetensors", {"fold": "0"})
    loaded = load_fold_model(tmp_path / "fold_00.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), loaded(x))
    assert not loaded.training


def _manifest(directory: Path) -> EnsembleManifest:
    files = []
    for k in range(2):
        path = directory / f"fold_{k:02d}.safetensors"
        path.write_bytes(f"weights {k}".encode())
        from training.data import file_sha256

        files.append(FoldEntry(k, path.name, file_sha256(path), {"accuracy": 0.5, "auc": None}))
    return EnsembleManifest(
        architecture="resnet50", input_size=64,
        preprocessing=PreprocessConfig(size=64).to_dict(), class_names=["normal", "covid"],
        positive_class="covid", threshold=0.3, threshold_target_sensitivity=0.95,
        threshold_oof_specificity=0.8, folds=files, dataset_fingerprint="ab" * 32, seed=1,
        package_version="0.1.0", model_version=model_version([f.sha256 for f in files]),
        created_at="2026-11-26T00:00:00+00:00", not_for_clinical_use=True, label="test",
        training={"epochs": 1},
    )


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    path = write_manifest(tmp_path, manifest)
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["format", "format_version"]
    assert data["format"] == "cxr-triage-ensemble" and data["format_version"] == 1
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.positive_index == 1
    assert loaded.preprocess_config() == PreprocessConfig(size=64)
    assert len(manifest.model_version) == 12

    (tmp_path / "fold_01.safetensors").write_bytes(b"tampered")
    with pytest.raises(TrainingError, match=r"fold_01.safetensors does not match its sha256"):
        load_manifest(tmp_path)
    (tmp_path / "fold_01.safetensors").unlink()
    with pytest.raises(TrainingError, match=r"fold_01.safetensors .* is missing"):
        load_manifest(tmp_path)


def test_manifest_rejects_other_formats(tmp_path: Path) -> None:
    write_manifest(tmp_path, replace(_manifest(tmp_path), format_version=2))
    with pytest.raises(TrainingError, match="format_version 2"):
        load_manifest(tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(TrainingError, match="not a cxr-triage ensemble"):
        load_manifest(tmp_path)
    with pytest.raises(TrainingError, match=r"no ensemble\.json"):
        load_manifest(tmp_path / "nowhere")
