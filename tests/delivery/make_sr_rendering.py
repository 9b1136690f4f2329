"""The rendering of a triage SR in docs/sr.md: a synthetic study's SR through dcmtk's dsr2html,
screenshot with headless chromium.

    .venv/bin/python -m tests.delivery.make_sr_rendering docs/img

writes ``sr-dsr2html.html`` and ``sr-dsr2html.png`` there.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cxr_triage.synthetic import dicom_study
from worker.report.content import StudyFinding
from worker.report.identity import ModelIdentity
from worker.report.sr import build_triage_sr, write_sr
from worker.score.decision import Decision

MODEL = ModelIdentity("cxr-triage COVID-19 ensemble", "resnet50-3f9a1c2e", "3f9a1c2e" * 8,
                      not_for_clinical_use=True)
FOLDS = (0.83, 0.77, 0.91, 0.70, 0.86, 0.79, 0.88, 0.74, 0.81, 0.80)
WINDOW = "1000,1500"


def example_sr(out: Path) -> Path:
    """The SR of a synthetic suspected study (10 folds, threshold 0.3137)."""
    (image,) = dicom_study(np.random.default_rng(7), covid=True, accession="SR-DOC-1")
    mean, std = float(np.mean(FOLDS)), float(np.std(FOLDS, ddof=1))
    finding = StudyFinding(Decision.SUSPECTED, mean, std, (str(image.SOPInstanceUID),), FOLDS,
                           threshold=0.3137)
    created = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
    sr = build_triage_sr([image], finding, MODEL, manufacturer="cxr-triage", created=created)
    return write_sr(sr, out / "sr-example.dcm")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found; install it (scripts/install-system-deps.sh)")
    html = out / "sr-dsr2html.html"
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["dsr2html", str(example_sr(Path(work))), str(html)], check=True)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={work}/profile", "--hide-scrollbars",
                        f"--window-size={WINDOW}", f"--screenshot={out / 'sr-dsr2html.png'}",
                        html.resolve().as_uri()], check=True, capture_output=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
