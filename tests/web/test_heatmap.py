"""The study page's heatmap overlay: the latest report's result image, served as a PNG.

The result image is written by the worker's own code (render, build, write) from the seeded
image with a synthetic heatmap, so no model is needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditLog, Decision, Instance, Report, Study
from tests.support.result_images import colour_fraction, rgb_of_png
from tests.web.conftest import WebEnv, login
from tests.web.seed import add_study
from training.preprocessing import load_unit_image
from worker.report.identity import ModelIdentity
from worker.report.result_image import (
    ImageFinding,
    Placement,
    build_result_image,
    render,
    write_result_image,
)
from worker.score.decision import Priority

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
MODEL = ModelIdentity("web test model", "v1", "cd" * 32)


def _with_result_image(session: Session, uid: str, folder: Path) -> int:
    """Write a result image for the study's image and record it on its report."""
    study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
    report = session.scalars(select(Report).where(Report.study_id == study.id)).one()
    instance = session.get(Instance, report.source_instance_id)
    assert instance is not None
    header = dcmread(instance.file_path, stop_before_pixels=True)
    yy, xx = np.mgrid[0:8, 0:8]
    cam = np.exp(-((yy - 3) ** 2 + (xx - 4) ** 2) / 6.0).astype(np.float32)  # one blob
    finding = ImageFinding(Decision.SUSPECTED, Priority.HIGH, 0.8, 0.05, 3, 0.5)
    placement = Placement(generate_uid(), generate_uid(), 10901)
    image = build_result_image(header, render(load_unit_image(instance.file_path), cam,
                                              finding, MODEL),
                               finding, MODEL, placement, manufacturer="tests")
    path = write_result_image(image, folder / "result.dcm")
    report.image_file_path = str(path)
    report.image_sop_instance_uid = placement.sop_instance_uid
    report.image_series_instance_uid = placement.series_instance_uid
    report.image_series_number = placement.series_number
    return instance.id


def test_the_study_page_offers_the_overlay_of_the_latest_result_image(web: WebEnv) -> None:
    with web.sessions.begin() as session:
        uid = add_study(session, web.folder / "seed", decision=Decision.SUSPECTED,
                        probability=0.8, accession="HEAT1")
        plain = add_study(session, web.folder / "seed", decision=Decision.SUSPECTED,
                          probability=0.7, accession="PLAIN1")
        instance_id = _with_result_image(session, uid, web.folder)
    url = f"/studies/{uid}/images/{instance_id}/heatmap.png"
    assert web.client.get(url, follow_redirects=False).status_code == 303  # login first
    assert login(web.client, "reader") == 303

    page = web.client.get(f"/studies/{uid}").text
    assert f'src="{url}"' in page and "overlay-toggle" in page
    assert "overlay-toggle" not in web.client.get(f"/studies/{plain}").text
    api = web.client.get(f"/api/studies/{uid}").json()
    assert [i["heatmap_url"] for i in api["images"]] == [url]

    response = web.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    pixels = rgb_of_png(response.content)
    assert max(pixels.shape[:2]) == 1024 and colour_fraction(pixels) > 0.02
    assert web.client.get(f"/studies/{uid}/images/{instance_id + 1}/heatmap.png"
                          ).status_code == 404
    with web.sessions() as session:
        actions = [(a.action, a.study_instance_uid) for a in session.scalars(select(AuditLog))]
    assert ("heatmap", uid) in actions
