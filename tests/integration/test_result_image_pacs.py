"""The result image end to end, Orthanc as the PACS: storescu -> node -> Redis -> worker.

The worker scores with a tiny random-weight ensemble (threshold 0: suspected), so the default
``TRIAGE_RESULT_IMAGE=flagged`` writes a result image beside the SR. Two destinations: Orthanc
takes both; an SCP that accepts SRs only refuses the Secondary Capture, so the image's
delivery fails there while the SR is sent.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from pynetdicom.events import Event

from tests.delivery.conftest import require_tool
from tests.delivery.test_scu import store_scp
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.result_images import colour_fraction, rgb_of_png
from tests.support.servers import RedisServer
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query, wait_until

CALLING_AE = "CXR_TRIAGE"
WAIT_S = 240


class Pacs:
    """What each peer received."""

    def __init__(self, orthanc: OrthancServer) -> None:
        self.orthanc = orthanc
        self.sr_only: list[str] = []  # SOP Class UIDs the SR-only SCP stored

    def store(self, event: Event) -> int:
        self.sr_only.append(str(event.dataset.SOPClassUID))
        return 0x0000

    def file(self, orthanc_id: str) -> bytes:
        return self._get(f"/instances/{orthanc_id}/file")

    def preview(self, orthanc_id: str) -> bytes:
        return self._get(f"/instances/{orthanc_id}/preview")

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.orthanc.rest_url + path, timeout=30) as response:
            return bytes(response.read())


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[Pacs, WorkerProcess, NodeProcess, str]]:
    db_url = f"sqlite:///{tmp_path / 'triage.db'}"
    redis = RedisServer(tmp_path / "redis").start()
    node = NodeProcess(tmp_path / "node", db_url, redis.url).start()
    orthanc = OrthancServer(tmp_path / "orthanc", allowed_callers=(CALLING_AE,)).start()
    pacs = Pacs(orthanc)
    worker = None
    try:
        with store_scp(pacs.store, sop_classes=(Comprehensive3DSRStorage,)) as sr_only_port:
            worker = WorkerProcess(
                tmp_path / "worker", db_url=db_url, broker_url=redis.url,
                model_dir=build_ensemble(tmp_path / "model"), storage_dir=node.storage,
                destinations=(f"ORTHANC@127.0.0.1:{orthanc.dicom_port},"
                              f"SRONLY@127.0.0.1:{sr_only_port}"),
                env={"TRIAGE_CALLING_AE": CALLING_AE, "TRIAGE_RESULT_IMAGE": "flagged",
                     "TRIAGE_INFERENCE_BACKEND": "torch",
                     "TRIAGE_INFERENCE_PRECISION": "fp32"}).start()
            yield pacs, worker, node, db_url
    finally:
        if worker is not None:
            worker.stop()
        node.stop()
        orthanc.stop()
        redis.kill()


def _states(db_url: str) -> dict[tuple[str, str], str]:
    rows = query(db_url, "SELECT destination, item, state FROM delivery")
    return {(str(d).split("@")[0], str(i)): str(s) for d, i, s in rows}


def _tags(orthanc: OrthancServer, orthanc_id: str) -> dict[str, Any]:
    return orthanc.get_instance_tags(orthanc_id)


def test_sr_and_result_image_reach_the_pacs_in_separate_series(
        run: tuple[Pacs, WorkerProcess, NodeProcess, str], tmp_path: Path) -> None:
    pacs, worker, node, db_url = run
    files = dicomgen.write_series(tmp_path / "study", 1)
    source = dcmread(files[0])
    assert len(storescu(node.port, files).succeeded) == 1

    expected = {("ORTHANC", "sr"): "sent", ("ORTHANC", "image"): "sent",
                ("SRONLY", "sr"): "sent", ("SRONLY", "image"): "failed"}
    wait_until(lambda: _states(db_url) == expected, WAIT_S,
               f"deliveries {expected}", lambda: worker.log() + node.log())
    assert pacs.sr_only == [Comprehensive3DSRStorage]  # the image was never stored there

    orthanc = pacs.orthanc
    by_class = {_tags(orthanc, i)["SOPClassUID"]: i for i in orthanc.instances()}
    assert set(by_class) == {Comprehensive3DSRStorage, SecondaryCaptureImageStorage}
    sr, image = (_tags(orthanc, by_class[c]) for c in (Comprehensive3DSRStorage,
                                                      SecondaryCaptureImageStorage))
    assert sr["StudyInstanceUID"] == image["StudyInstanceUID"] == source.StudyInstanceUID
    assert sr["SeriesInstanceUID"] != image["SeriesInstanceUID"]
    assert (sr["SeriesNumber"], image["SeriesNumber"]) == ("9901", "10901")
    assert image["SeriesDescription"] == "AI COVID-19 triage image: SUSPECTED - HIGH PRIORITY"
    assert image["BurnedInAnnotation"] == "YES"
    study = orthanc.get(f"/instances/{by_class[Comprehensive3DSRStorage]}/study")
    assert len(orthanc.get(f"/studies/{study['ID']}")["Series"]) == 2

    # dciodvfy on the image as the PACS stored it
    stored = tmp_path / "stored-image.dcm"
    stored.write_bytes(pacs.file(by_class[SecondaryCaptureImageStorage]))
    check = subprocess.run([require_tool("dciodvfy"), str(stored)], capture_output=True,
                           text=True)
    assert [line for line in (check.stdout + check.stderr).splitlines()
            if line.startswith("Error")] == []

    # Orthanc renders it, and the rendering shows the heatmap over the radiograph.
    source_id = orthanc.post("/instances", files[0].read_bytes())["ID"]
    source_png = rgb_of_png(pacs.preview(source_id))
    image_png = rgb_of_png(pacs.preview(by_class[SecondaryCaptureImageStorage]))
    assert colour_fraction(source_png) == 0.0  # the radiograph is grey...
    assert colour_fraction(image_png) > 0.05  # ...its result image is coloured
    # and under the colour it is the same radiograph: luminance follows the source's
    height, width = source_png.shape[:2]
    grey = np.asarray(Image.fromarray(image_png).convert("L").resize(
        (width, height), Image.Resampling.BOX), dtype=np.float64)
    band = slice(int(height * 0.2), int(height * 0.8))  # below and above the text boxes
    source_grey = source_png[band, :, 0].astype(np.float64)
    assert np.corrcoef(grey[band].ravel(), source_grey.ravel())[0, 1] > 0.5
