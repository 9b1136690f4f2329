"""Fixtures for the rescore tests: a second tiny ensemble, the CLI as a subprocess, queries.

The worker suite's fixtures (``sessions``, ``add_instance``, ``tiny_ensemble``) are reused.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from tests.support import dicomgen, hooked_cli
from tests.support.markers import mark_folder
from tests.worker.conftest import (  # noqa: F401  (fixtures)
    add_instance,
    build_ensemble,
    sessions,
    tiny_ensemble,
)
from tests.worker.processes import query  # noqa: F401  (re-exported for the tests here)
from training.manifest import load_manifest, write_manifest
from training.preprocessing import preprocess
from worker.score.ensemble import Ensemble
from worker.settings import InferenceSettings


def write_study(directory: Path, count: int, brightness: float) -> list[Path]:
    """``count`` radiographs of one study whose pixel values span ``brightness`` of 12 bits."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for index in range(count):
        ds = dicomgen.radiograph(study_uid=study_uid, series_uid=series_uid, seed=index)
        rng = np.random.default_rng(index)
        top = max(2, int(4095 * brightness))
        ds.PixelData = rng.integers(0, top, size=(ds.Rows, ds.Columns),
                                    dtype=np.uint16).tobytes()
        files.append(dicomgen.write(ds, directory / f"{index:04d}.dcm"))
    return files


def set_threshold(model_dir: Path, threshold: float) -> None:
    """Rewrite the manifest's threshold (the model version, from the fold hashes, stays)."""
    manifest = load_manifest(model_dir)
    write_manifest(model_dir, dataclasses.replace(manifest, threshold=threshold))


def ensemble_means(model_dir: Path, files: Sequence[Path]) -> list[float]:
    """The ensemble's mean probability of each file, as the rescore computes it."""
    torch.set_num_threads(1)
    ensemble = Ensemble.load(model_dir, InferenceSettings(device="cpu"))
    batch = torch.stack([preprocess(path, ensemble.config) for path in files])
    return list(ensemble.predict(batch).mean)


def cli_env(tmp_path: Path, db_url: str, model_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a ``cxr-triage`` subprocess on the test's database."""
    return {
        **os.environ,
        "TRIAGE_VAR_DIR": str(tmp_path / "var"),
        "TRIAGE_DB_URL": db_url,
        "TRIAGE_BROKER_URL": "filesystem://",
        "TRIAGE_BROKER_DIR": str(tmp_path / "broker"),
        "TRIAGE_MODEL_DIR": str(model_dir),
        "TRIAGE_SR_DIR": str(tmp_path / "sr"),
        "TRIAGE_CALLING_AE": "CXR_TRIAGE",
        "TRIAGE_STUDY_QUIET_S": "0",
        "TRIAGE_TORCH_THREADS": "1",
        "TRIAGE_DEVICE": "cpu",
        "TRIAGE_RESCORE_WORKERS": "1",
        "TRIAGE_RESCORE_BATCH": "4",
        "TRIAGE_RESULT_IMAGE": "off",  # SRs only (tests/worker/test_result_image_report.py)
        **extra,
    }


def cli(env: Mapping[str, str], *args: str, timeout: float = 180,
        hooks: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cxr_triage ARGS`` and return the finished process.

    ``hooks`` (``tests.support.hooked_cli`` variables) run it through that test entry point
    with those fault hooks installed.
    """
    command = [sys.executable, "-m", "cxr_triage", *args]
    if hooks:
        env, command = hooked_cli.environment(env, hooks), hooked_cli.command(*args)
    return subprocess.run(command, env=dict(env), capture_output=True, text=True,
                          timeout=timeout)


INTEGRATION_MODULES = frozenset({"test_distributed.py", "test_rescore_e2e.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need Redis, a worker process or Orthanc (tests/support/markers.py)."""
    mark_folder(items, Path(__file__).parent, INTEGRATION_MODULES)
