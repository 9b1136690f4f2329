"""End to end: ``cxr-triage train`` on the shared data, ``evaluate``, resume and CLI errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from cxr_triage.cli import main
from training import cv
from training.manifest import load_manifest
from training.model import load_fold_model


def small(**changes: str) -> list[str]:
    """Flags of the smallest useful run (2 folds, 1 epoch, 32 px, 4 images per class)."""
    flags = {"folds": "2", "epochs": "1", "input-size": "32", "weights": "none", "limit": "4",
             "batch-size": "4", "device": "cpu", **changes}
    return [item for key, value in flags.items() for item in (f"--{key}", value)]


def test_train_writes_a_loadable_ensemble(tiny_run: Path) -> None:
    manifest = load_manifest(tiny_run)
    assert manifest.architecture == "resnet50" and manifest.input_size == 64
    assert manifest.class_names == ["normal", "covid"] and manifest.positive_class == "covid"
    assert [f.file for f in manifest.folds] == ["fold_00.safetensors", "fold_01.safetensors"]
    assert 0.0 <= manifest.threshold <= 1.0 and manifest.threshold_target_sensitivity == 0.95
    assert manifest.training["epochs"] == 1 and manifest.training["weights"] == "none"
    assert manifest.not_for_clinical_use is True
    raw = json.loads((tiny_run / "ensemble.json").read_text())
    assert "NaN" not in (tiny_run / "ensemble.json").read_text()
    assert set(raw["folds"][0]["metrics"]) == {"sensitivity", "specificity", "precision", "f1",
                                               "accuracy", "auc"}
    model = load_fold_model(tiny_run / manifest.folds[0].file)
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    for name in ("report.md", "metrics.csv", "folds.csv", "confusion_matrices.png",
                 "training_progress.png", "roc_oof.png", "oof_predictions.csv"):
        assert (tiny_run / name).stat().st_size > 0, name


def test_train_tables_and_folds_are_consistent(tiny_run: Path) -> None:
    with (tiny_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["fold"] for r in rows] == ["Fold 1", "Fold 2", "Overlapped"]
    summed = {k: sum(int(r[k]) for r in rows[:2]) for k in ("tp", "fn", "fp", "tn")}
    assert summed == {k: int(rows[2][k]) for k in summed}
    assert sum(summed.values()) == 16  # --limit 8 per class
    with (tiny_run / "folds.csv").open() as handle:
        folds = list(csv.DictReader(handle))
    by_patient: dict[str, set[str]] = defaultdict(set)
    for row in folds:
        by_patient[row["patient"]].add(row["fold"])
    assert all(len(v) == 1 for v in by_patient.values())
    assert "| Overlapped |" in (tiny_run / "report.md").read_text()


def test_evaluate_on_the_trained_ensemble(tiny_run: Path, cxr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(tiny_run), "--data", str(cxr_dir), "--out", str(out),
                 "--limit", "6", "--device", "cpu"])
    assert code == 0
    text = (out / "report.md").read_text()
    assert "Brier score" in text and "mean per-image std" in text
    with (out / "predictions.csv").open() as handle:
        preds = list(csv.DictReader(handle))
    assert len(preds) == 12
    assert all(0.0 <= float(p["p_covid_mean"]) <= 1.0 for p in preds)
    assert any(float(p["p_covid_std"]) > 0 for p in preds)  # two different fold models
    with (out / "metrics.csv").open() as handle:
        names = [r["fold"] for r in csv.DictReader(handle)]
    assert names[:2] == ["Fold 1 model", "Fold 2 model"] and names[2] == "Ensemble (p > 0.5)"
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (out / name).stat().st_size > 0


def test_interrupted_run_resumes_at_the_unfinished_fold(
    cxr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(cxr_dir), "--out", str(out), *small()]
    real_train_fold = cv.train_fold
    trained: list[int] = []

    def failing_second_fold(data: cv.Prepared, index: int, *rest: object) -> cv.FoldResult:
        if index == 1:
            raise KeyboardInterrupt  # as if the operator pressed Ctrl-C during fold 2
        trained.append(index)
        return real_train_fold(data, index, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(cv, "train_fold", failing_second_fold)
    assert main(args) == 130
    assert trained == [0]
    assert (out / "fold_00.safetensors").is_file() and not (out / "fold_01.json").exists()
    first_mtime = (out / "fold_00.safetensors").stat().st_mtime_ns

    def recording(data: cv.Prepared, index: int, *rest: object) -> cv.FoldResult:
        trained.append(index)
        return real_train_fold(data, index, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(cv, "train_fold", recording)
    assert main(args) == 0
    assert trained == [0, 1], "fold 1 was retrained after the interruption"
    assert (out / "fold_00.safetensors").stat().st_mtime_ns == first_mtime
    assert len(load_manifest(out).folds) == 2



def test_other_settings_in_the_same_directory_are_refused(
    cxr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"epochs": 7}}))
    assert main(["train", "--data", str(cxr_dir), "--out", str(out), *small()]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "epochs" in err


def test_cli_errors_are_clear(cxr_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty_hub"))
    try:
        code = main(["train", "--data", str(cxr_dir), "--out", str(tmp_path / "a"),
                     *small(weights="imagenet")])
    finally:
        torch.hub.set_dir(old)
    assert code == 2
    assert "ImageNet weights not found" in capsys.readouterr().err
    code = main(["train", "--data", str(cxr_dir), "--out", str(tmp_path / "b"),
                 *small(limit="3", folds="4")])
    assert code == 2
    assert "class 'normal' has 3 images but 4 folds" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(cxr_dir)]) == 2
    assert "no ensemble.json" in capsys.readouterr().err


def test_cli_module_does_not_import_torch() -> None:
    # `cxr-triage --help` must stay fast: torch is imported only when a command runs.
    code = "import sys, training.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
