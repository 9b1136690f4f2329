"""The node's header rules against storescu: laterals, decubitus and non-chest images are skipped
with a named reason; chest radiographs without Body Part Examined are still scored."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.worker.gate_support import CHEST_FILES, DENTAL, HIP, without_body_part


def _generated(tmp_path: Path, name: str, **attributes: object) -> Path:
    ds = dicomgen.radiograph(seed=len(name))
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return dicomgen.write(ds, tmp_path / f"{name}.dcm")


def test_header_rules_skip_with_named_reasons(node: NodeProcess, shared_dicom: Path,
                                              tmp_path: Path) -> None:
    expected = {
        without_body_part(shared_dicom / DENTAL, tmp_path / "dental.dcm"): "not a chest: ",
        without_body_part(shared_dicom / HIP, tmp_path / "hip.dcm"): "not a chest: ",
        _generated(tmp_path, "lateral", ViewPosition="LL"): "lateral view: ",
        _generated(tmp_path, "lateral-by-series", ViewPosition=None,
                   SeriesDescription="Thorax lat"): "lateral view: ",
        _generated(tmp_path, "lateral-by-orientation", PatientOrientation=["P", "F"]):
            "lateral view: ",
        _generated(tmp_path, "decubitus", ViewPosition="LLD"): "decubitus view: ",
        _generated(tmp_path, "knee", BodyPartExamined=None, ViewPosition=None,
                   ImageLaterality="L"): "one-sided image without a body part or view: ",
        _generated(tmp_path, "abdomen", BodyPartExamined="ABDOMEN"): "not a chest: ",
    }
    chest = [without_body_part(shared_dicom / name, tmp_path / f"chest-{i}.dcm")
             for i, name in enumerate(CHEST_FILES[:3])]  # CR/DX ones the node accepts
    frontal_by_series = _generated(tmp_path, "pa-and-lat", SeriesDescription="CHEST PA LAT")
    run = storescu(node.port, [*expected, *chest, frontal_by_series])
    rows = node.instances()
    for path, reason in expected.items():
        assert run.status_of(path) == 0, run.output[-2000:]
        status, why = rows[str(dcmread(path, force=True).SOPInstanceUID)][:2]
        assert status == "skipped" and str(why).startswith(reason), (path.name, why)
    for path in [*chest, frontal_by_series]:  # View Position PA outranks the description
        status, why = rows[str(dcmread(path, force=True).SOPInstanceUID)][:2]
        assert status in ("received", "queued") and why is None, (path.name, why)
