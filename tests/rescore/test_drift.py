"""``cxr-triage drift`` on recorded runs, and the metrics against scipy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.cli import main
from db.models import RunStatus
from db.runs import NewRun, start_run, update_run
from worker.rescore.drift import Thresholds, ks_statistic_numpy, psi


def _run(sessions: sessionmaker[Session], version: str, probabilities: np.ndarray,
         rate: float, status: RunStatus = RunStatus.SUCCEEDED) -> int:
    with sessions.begin() as session:
        run_id = start_run(session, NewRun(model_version=version, model_dir="/m", mode="local",
                                           host="h", pid=1, parameters={}))
        update_run(session, run_id, status=status.value, indeterminate_rate=rate,
                   finished_at=dt.datetime.now(dt.UTC),
                   probabilities=[float(p) for p in probabilities])
    return run_id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_drift_table_png_and_warning(
    sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(0)
    _run(sessions, "aaaa", rng.beta(2, 5, 2000), 0.05)
    _run(sessions, "aaaa", rng.beta(2, 5, 2000), 0.05)
    _run(sessions, "aaaa", rng.beta(2, 5, 10), 0.9, RunStatus.FAILED)  # not shown
    monkeypatch.setenv("TRIAGE_DB_URL", db_url)
    png = tmp_path / "drift.png"

    assert main(["drift", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and png.read_bytes()[:4] == b"\x89PNG"
    assert out.count("aaaa") == 2

    shifted = _run(sessions, "bbbb", rng.beta(5, 2, 2000), 0.20)
    assert main(["drift", "--runs", "3", "--out", str(png)]) == 4
    out = capsys.readouterr().out
    assert f"WARNING: drift: run {shifted} (bbbb) vs run 2 (aaaa): PSI" in out
    assert "KS" in out and "indeterminate rate +0.150" in out
    assert "Model versions" in out
    assert main(["drift", "--threshold", "100", "--ks-threshold", "1",
                 "--rate-threshold", "1"]) == 0
    assert "WARNING" not in capsys.readouterr().out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_drift_needs_two_runs(sessions: sessionmaker[Session], db_url: str,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRIAGE_DB_URL", db_url)
    assert main(["drift"]) == 0
    assert "need 2" in capsys.readouterr().out


def test_metrics() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.beta(2, 5, 500), rng.beta(2.5, 5, 700)
    assert ks_statistic_numpy(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    ties = [0.5] * 10 + [0.7] * 5
    assert ks_statistic_numpy(ties, [0.5] * 5) == pytest.approx(ks_2samp(ties, [0.5] * 5).statistic)
    assert psi(a, a) == pytest.approx(0.0)
    assert psi(a, rng.beta(2, 5, 500)) < 0.1 < psi(a, rng.beta(5, 2, 500))
    assert psi([0.5] * 50, [0.5] * 50) == pytest.approx(0.0)  # one value: fixed bins
    assert Thresholds().psi == 0.2
