"""End to end: a hip radiograph whose header says nothing against a chest goes through storescu,
node, Redis and worker, is found unlike the training data, and reaches Orthanc as an SR that
says "not assessable" with no priority and no probability."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.dcmtk import storescu
from tests.worker.gate_support import HIP, as_plain_cr, build_gated_ensemble
from tests.worker.processes import wait_until
from tests.worker.test_worker_e2e import Stack, _orthanc_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return build_gated_ensemble(tmp_path_factory.mktemp("gated") / "model", shared_data)


@pytest.fixture
def stack(tmp_path: Path, db_url: str, gated: Path) -> Iterator[Stack]:
    built = Stack(tmp_path, db_url, gated)
    try:
        yield built
    finally:
        built.close()


def _items(ds: Dataset) -> list[Dataset]:
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found += _items(item)
    return found


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_not_assessable_reaches_the_pacs_without_priority(stack: Stack, shared_dicom: Path,
                                                          tmp_path: Path) -> None:
    hip = as_plain_cr(shared_dicom / HIP, tmp_path / "hip.dcm")
    assert len(storescu(stack.node.port, [hip]).succeeded) == 1
    stack.worker()
    pacs = stack.destinations.split(",")[0]
    wait_until(lambda: stack.delivery_states().get(pacs) == "sent", 180,
               "the SR to be delivered", stack.logs)
    (decision,) = stack.rows("SELECT decision FROM score")[0]
    assert decision == "not_assessable"
    (sop_uid, report_decision, priority) = stack.rows(
        "SELECT sr_sop_instance_uid, decision, priority FROM report")[0]
    assert (report_decision, priority) == ("not_assessable", "ROUTINE")
    sr = _orthanc_file(stack.orthanc, sop_uid)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == dcmread(hip).StudyInstanceUID
    items = _items(sr)
    concepts = {i.ConceptNameCodeSequence[0].CodeMeaning for i in items
                if "ConceptNameCodeSequence" in i}
    assert "Priority" not in concepts and "Probability" not in concepts
    values = {i.ConceptCodeSequence[0].CodeMeaning for i in items if "ConceptCodeSequence" in i}
    assert "Undetermined" in values and "High priority" not in values
    assert any("not assessable: image unlike the training data" in str(i.get("TextValue", ""))
               for i in items)
