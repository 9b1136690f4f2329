"""The image gate's statistics: fitting, distances, threshold, sidecars and the manifest block."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_triage.cli import main
from training.errors import TrainingError
from training.gate_probe import write_probe_set
from training.manifest import MANIFEST_FILE, load_manifest
from training.model import build_resnet50
from training.ood import (
    TARGET_REJECTION,
    FoldStats,
    Gate,
    calibrate,
    choose_threshold,
    crossfit_rejection,
    features_and_logits,
    fit_fold_stats,
    load_fold_stats,
    load_gate,
    save_fold_stats,
)
from training.outlier import (
    OUTLIER_KINDS,
    choose_thresholds,
    combined_score,
    fit_outlier_head,
    outlier_examples,
)


def _gaussian(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    scales = np.linspace(3.0, 0.1, 128)  # a few strong directions, many weak ones
    return rng.normal(size=(n, 128)) * scales + shift


def test_distance_separates_shifted_from_in_distribution_features() -> None:
    rng = np.random.default_rng(0)
    stats = fit_fold_stats(_gaussian(rng, 200), dims=(128,))
    assert stats.layers[0].components.shape == (128, 64)
    inside, outside = stats.distance(_gaussian(rng, 100)), stats.distance(_gaussian(rng, 100, 1.0))
    assert np.median(inside) < np.min(outside)
    # a shift in a weak direction, outside the 64 components, is seen by the residual term
    # (pooled over the 64 other directions, so it must be large against their variance)
    weak = _gaussian(rng, 100)
    weak[:, -1] += 10.0
    assert np.median(stats.distance(weak)) > np.percentile(inside, 99)


def test_threshold_rejects_at_most_the_target_share() -> None:
    scores = np.random.default_rng(1).gamma(2.0, size=337)
    threshold = choose_threshold(scores)
    assert (scores > threshold).mean() <= TARGET_REJECTION
    assert (scores >= threshold).mean() > TARGET_REJECTION - 1 / 337  # not looser than needed
    folds = np.arange(337) % 5
    assert 0.0 <= crossfit_rejection(scores, folds) <= 0.1


def test_stages_are_scaled_on_held_out_images_and_the_farthest_counts() -> None:
    rng = np.random.default_rng(3)
    train = np.hstack([_gaussian(rng, 80), 5 * _gaussian(rng, 80)])  # stage 2 on another scale
    stats = calibrate(fit_fold_stats(train, dims=(128, 128)),
                      np.hstack([_gaussian(rng, 40), 5 * _gaussian(rng, 40)]))
    probe = np.hstack([_gaussian(rng, 40), 5 * _gaussian(rng, 40)])
    per_stage = stats.layer_distances(probe)
    assert per_stage.shape == (2, 40) and abs(np.median(per_stage) - 1.0) < 0.2
    assert np.allclose(stats.distance(probe), per_stage.max(0))
    odd = probe.copy()
    odd[:, :128] += 2.0  # only the first stage changes: the fold distance still sees it
    assert np.median(stats.distance(odd)) > 1.5 * np.median(stats.distance(probe))
    with pytest.raises(TrainingError, match="expect 256 features"):
        stats.distance(probe[:, :200])


def test_sidecar_round_trip_keeps_distances(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stats = calibrate(fit_fold_stats(_gaussian(rng, 50), dims=(64, 64)), _gaussian(rng, 9))
    assert stats.scale > 0 and all(layer.scale > 0 for layer in stats.layers)
    digest = save_fold_stats(tmp_path / "fold_00.ood.safetensors", stats)
    assert len(digest) == 64
    again = load_fold_stats(tmp_path / "fold_00.ood.safetensors")
    probe = _gaussian(rng, 5)
    assert np.allclose(again.distance(probe), stats.distance(probe))
    assert again.scale == stats.scale


def test_outlier_head_separates_shifted_features_and_survives_the_sidecar(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    inside, outside = _gaussian(rng, 120), _gaussian(rng, 120)
    outside[:, 5:20] += 4.0  # transformed images move along a few directions
    stats = dataclasses.replace(
        calibrate(fit_fold_stats(inside, dims=(128,)), _gaussian(rng, 30)),
        outlier=fit_outlier_head(inside, outside))
    assert stats.outlier is not None
    fresh_in, fresh_out = _gaussian(rng, 50), _gaussian(rng, 50)
    fresh_out[:, 5:20] += 4.0
    assert np.max(stats.outlier.logit(fresh_in)) < np.median(stats.outlier.logit(fresh_out))
    save_fold_stats(tmp_path / "s.ood.safetensors", stats)
    again = load_fold_stats(tmp_path / "s.ood.safetensors")
    assert again.outlier is not None
    assert np.allclose(again.outlier.logit(fresh_out), stats.outlier.logit(fresh_out))
    assert np.allclose(again.distance(fresh_in), stats.distance(fresh_in))


def test_sidecar_without_outlier_head_gates_on_distance_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    stats = calibrate(fit_fold_stats(_gaussian(rng, 60), dims=(128,)), _gaussian(rng, 20))
    save_fold_stats(tmp_path / "old.ood.safetensors", stats)  # written before the head
    old = load_fold_stats(tmp_path / "old.ood.safetensors")
    assert old.outlier is None
    probe = [_gaussian(rng, 10)]
    gate = Gate((old,), threshold=1.5, outlier_threshold=0.0)  # a threshold but no head
    assert gate.outlier_logits(probe) is None
    assert np.allclose(gate.scores(probe), old.distance(probe[0]) / old.scale)


def test_two_tests_share_the_budget_and_one_score_decides() -> None:
    rng = np.random.default_rng(6)
    distance, logit = rng.gamma(2.0, size=400), rng.normal(-4.0, 1.0, size=400)
    t_distance, t_logit = choose_thresholds(distance, logit, TARGET_REJECTION)
    refused = (distance > t_distance) | (logit > t_logit)
    assert refused.mean() <= TARGET_REJECTION
    assert (logit > t_logit).mean() <= TARGET_REJECTION / 2
    assert (distance > t_distance).any()  # the distance gets the rest of the budget
    score = combined_score(distance, logit, t_distance, t_logit)
    assert np.array_equal(score > t_distance, refused)
    assert np.all(score >= distance)
    folds = np.arange(400) % 5
    assert 0.0 <= crossfit_rejection(distance, folds, logits=logit) <= 0.1
    stats = FoldStats((), 1.0)
    assert stats.outlier is None


def test_outlier_examples_turn_invert_crop_and_flip_each_image() -> None:
    units = torch.rand(8, 1, 32, 32)
    examples = outlier_examples(units, seed=0)
    assert examples.shape == units.shape
    assert torch.allclose(examples[1], 1.0 - units[1])  # kinds in turn: rot90, inverted, ...
    assert torch.equal(examples[3], torch.flip(units[3], dims=(1,)))
    rotated = examples[0]
    assert any(torch.equal(rotated, torch.rot90(units[0], k, dims=(1, 2))) for k in (1, 3))
    assert not torch.allclose(examples[2], units[2])  # a resized window


def test_features_and_logits_is_the_models_own_forward_pass() -> None:
    torch.manual_seed(0)
    model = build_resnet50(2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features, logits = features_and_logits(model, x)
        assert features.shape == (2, 3840)
        assert torch.allclose(logits, model(x), atol=1e-5)
        pooled = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(
            model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
        assert torch.allclose(features[:, -2048:], pooled, atol=1e-5)


def test_training_records_the_gate_per_fold(tiny_run: Path) -> None:
    manifest = load_manifest(tiny_run)
    gate = manifest.ood_gate
    assert gate is not None and gate["method"].startswith("ppca-mahalanobis-ledoit-wolf")
    assert [f["file"] for f in gate["folds"]] == ["fold_00.ood.safetensors",
                                                  "fold_01.ood.safetensors"]
    assert gate["oof_rejection"] <= TARGET_REJECTION and gate["oof_images"] == 16
    loaded = load_gate(tiny_run, gate)
    assert loaded is not None and len(loaded.folds) == 2
    # every fold carries its outlier-exposure head, and both tests share the 2 %
    assert all(fold.outlier is not None for fold in loaded.folds)
    assert loaded.outlier_threshold == gate["outlier_threshold"]
    assert gate["outlier_kinds"] == list(OUTLIER_KINDS)
    assert gate["oof_outlier_rejection"] <= TARGET_REJECTION / 2
    with (tiny_run / "oof_gate.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    assert sum(int(r["not_assessable"]) for r in rows) == round(
        gate["oof_rejection"] * 16)
    assert "Image gate (not assessable)" in (tiny_run / "report.md").read_text()


def test_manifest_refuses_missing_or_changed_statistics(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ensemble"
    copy.mkdir()
    for path in tiny_run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    sidecar = copy / "fold_01.ood.safetensors"
    sidecar.write_bytes(sidecar.read_bytes()[:-1] + b" ")
    with pytest.raises(TrainingError, match="do not match their sha256"):
        load_manifest(copy)
    sidecar.unlink()
    with pytest.raises(TrainingError, match="are missing"):
        load_manifest(copy)
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw.pop("ood_gate")  # an ensemble from before the gate
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    assert load_manifest(copy).ood_gate is None


def test_evaluate_prints_both_rates_with_a_non_chest_folder(
    tiny_run: Path, cxr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    chest = sorted((cxr_dir / "covid").glob("*.png"))[:3] + sorted(
        (cxr_dir / "normal").glob("*.png"))[:3]
    counts = write_probe_set(tmp_path / "probe", chest, labels=[p.parent.name for p in chest],
                             per_kind=2)
    assert counts == {"crop": 2, "rot90": 2, "inverted": 2, "blank": 2, "noise": 2,
                      "lateral": 2, "real": 0}
    code = main(["evaluate", "--model", str(tiny_run), "--data", str(tmp_path / "probe"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "of 6 chest images (goal <= 2 %)" in printed
    assert "of 12 non-chest images (goal >= 95 %)" in printed
    with (tmp_path / "eval" / "gate_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["label"] for r in rows) == ["covid"] * 3 + ["non-chest"] * 12 + ["normal"] * 3
    assert "Image gate (not assessable)" in (tmp_path / "eval" / "report.md").read_text()
