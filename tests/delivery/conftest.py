"""Fixtures for the SR and delivery tests: shared images, a built SR, a real Orthanc, dcmtk."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support import dicomgen
from tests.support.markers import mark_folder
from tests.support.orthanc import OrthancServer, free_port
from worker.report.content import StudyFinding
from worker.report.identity import ModelIdentity
from worker.report.sr import build_triage_sr, write_sr
from worker.score.decision import Decision

# CI clones the repository into another folder with shared/ beside it.
SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
CALLING_AE = "CXR_TRIAGE"
MODEL = ModelIdentity(algorithm_name="cxr-triage", version="0.1.0", ensemble_hash="0" * 64)


def require_tool(name: str) -> str:
    """Path of a command-line tool; a missing tool fails the test, it never skips it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; install dcmtk, dicom3tools and orthanc")
    return path


def shared_image(name: str) -> Dataset:
    """A header from ../shared/data/dicom (read with force: some lack file meta)."""
    path = SHARED_DICOM / name
    if not path.exists():
        pytest.fail(f"shared test image {path} is missing; check out shared/ beside the repo")
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture
def generated_source() -> Dataset:
    """A synthetic CR header carrying recognisable PHI (tests.support.dicomgen)."""
    return dicomgen.radiograph()


@pytest.fixture
def sr_file(tmp_path: Path, generated_source: Dataset) -> Path:
    """A written triage SR (decision: suspected) for the generated source."""
    finding = StudyFinding(Decision.SUSPECTED, 0.91, 0.04, (generated_source.SOPInstanceUID,))
    sr = build_triage_sr([generated_source], finding, MODEL, manufacturer="cxr-triage tests")
    return write_sr(sr, tmp_path / "sr.dcm")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A running Orthanc (AE ORTHANC) that accepts C-STORE from CXR_TRIAGE only."""
    server = OrthancServer(tmp_path / "orthanc", aet="ORTHANC", allowed_callers=(CALLING_AE,))
    with server:
        yield server


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp as a subprocess: (port, output directory)."""
    exe = require_tool("storescp")
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, "-od", str(out), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


INTEGRATION_MODULES = frozenset({"test_scu.py", "test_commitment.py", "test_stow.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests against a real Orthanc or storescp (tests/support/markers.py)."""
    mark_folder(items, Path(__file__).parent, INTEGRATION_MODULES)
