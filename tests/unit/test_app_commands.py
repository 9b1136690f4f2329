"""`cxr-triage up` refuses to start without an ensemble; synthetic demo data is labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_triage.cli import main
from cxr_triage.synthetic import dicom_study, radiograph, write_training_set


def test_up_without_ensemble_says_how_to_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRIAGE_DB_URL", f"sqlite:///{tmp_path / 'triage.db'}")
    assert main(["up", "--model-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no ensemble" in err and "cxr-triage train" in err and "make demo" in err


def test_synthetic_images_differ_by_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    normal = np.mean([radiograph(rng, covid=False)[140:190].mean() for _ in range(5)])
    covid = np.mean([radiograph(rng, covid=True)[140:190].mean() for _ in range(5)])
    assert covid > normal  # lower-zone opacities
    root = write_training_set(tmp_path / "syn", per_class=2)
    assert sorted(p.name for p in (root / "covid").iterdir()) == ["0000.png", "0001.png"]
    assert "Synthetic" in (root / "README.txt").read_text()
    study = dicom_study(rng, covid=True, accession="X1", images=2)
    assert len(study) == 2 and study[0].StudyInstanceUID == study[1].StudyInstanceUID
    assert study[0].PatientName == "SYNTHETIC^X1" and study[0].ViewPosition == "PA"


def test_nightly_schedule() -> None:
    import datetime as dt

    from common.errors import TriageError
    from cxr_triage.nightly import next_run, parse_at

    at = parse_at("02:30")
    assert next_run(dt.datetime(2026, 11, 26, 1, 0), at) == dt.datetime(2026, 11, 26, 2, 30)
    assert next_run(dt.datetime(2026, 11, 26, 2, 30), at) == dt.datetime(2026, 11, 27, 2, 30)
    with pytest.raises(TriageError, match="HH:MM"):
        parse_at("2am")


def test_nightly_once_runs_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nightly", "--once", "--", "db", "--db-url", "sqlite://", "current"]) == 0
