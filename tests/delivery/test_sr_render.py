"""What a reader sees of the triage SR: dsr2html's rendering and the series headers."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.delivery.conftest import MODEL, require_tool, shared_image
from tests.support import dicomgen
from worker.report.content import (
    SERIES_DESCRIPTION_MAX,
    PredecessorRef,
    StudyFinding,
    series_description,
    sr_series_number,
)
from worker.report.identity import ModelIdentity
from worker.report.sr import build_triage_sr, write_sr
from worker.score.decision import Decision

FOLDS = (0.61, 0.74, 0.66, 0.58, 0.70)
# The concept name and value of each item a reader needs, in the order they must appear.
RESULT_ITEMS = {
    Decision.SUSPECTED: [("COVID-19", "Suspected"), ("Priority (attribute)", "High priority")],
    Decision.NOT_SUSPECTED: [("COVID-19", "NOT suspected"), ("Priority (attribute)", "Routine")],
    Decision.INDETERMINATE: [("COVID-19", "Indeterminate"), ("Priority (attribute)", "Routine")],
    Decision.NOT_ASSESSABLE: [("COVID-19", "Undetermined")],
}
NUMBER_ITEMS = [("Probability", "0.6586"), ("Threshold Value", "0.3137"),
                ("Standard Deviation", "0.0612")]
FOLD_ITEMS = [(f"Fold {n} probability", str(p)) for n, p in enumerate(FOLDS, start=1)]
HEADER = {
    Decision.SUSPECTED: "AI COVID-19 triage: SUSPECTED - HIGH PRIORITY",
    Decision.NOT_SUSPECTED: "AI COVID-19 triage: NOT SUSPECTED - ROUTINE",
    Decision.INDETERMINATE: "AI COVID-19 triage: INDETERMINATE - ROUTINE",
    Decision.NOT_ASSESSABLE: "AI COVID-19 triage: NOT ASSESSABLE - NO PRIORITY",
}


class _Text(HTMLParser):
    """The text of an HTML page, as a browser would show it (tags dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def rendered_text(path: Path) -> str:
    """dsr2html's rendering of the SR at ``path`` as one line of text."""
    run = subprocess.run([require_tool("dsr2html"), str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    parser = _Text()
    parser.feed(run.stdout)
    return " ".join(" ".join(parser.parts).split())


def _positions(text: str, items: list[tuple[str, str]]) -> list[int]:
    """Where each ``name: value`` item starts in ``text`` (it must be there)."""
    found = []
    for name, value in items:
        match = re.search(rf"{re.escape(name)}: {re.escape(value)}\b", text)
        assert match is not None, f"{name}: {value} not rendered in place"
        found.append(match.start())
    return found


def _finding(source: Dataset, decision: Decision) -> StudyFinding:
    return StudyFinding(decision, 0.658619999, 0.0612345, (str(source.SOPInstanceUID),), FOLDS,
                        threshold=0.3137254901960784)


@pytest.mark.parametrize("decision", list(Decision))
@pytest.mark.parametrize("source_kind", ["generated", "fo-dicom_CR-MONO1-10-chest.dcm"])
def test_dsr2html_shows_the_result_first_in_order(tmp_path: Path, decision: Decision,
                                                  source_kind: str) -> None:
    source = dicomgen.radiograph() if source_kind == "generated" else shared_image(source_kind)
    path = write_sr(build_triage_sr([source], _finding(source, decision), MODEL,
                                    manufacturer="tests"), tmp_path / "sr.dcm")
    text = rendered_text(path)

    annex = text.find("Annex Annex 1 ")  # the annex section: its heading, then the first entry
    header = text.index(f"Series: {HEADER[decision]} (#9901)")
    caution = text.index('Tracking Identifier = "AI triage result - not verified"'
                         if decision is not Decision.NOT_ASSESSABLE else "Tracking Identifier")
    wanted = RESULT_ITEMS[decision]
    if decision is not Decision.NOT_ASSESSABLE:
        wanted = wanted + NUMBER_ITEMS + FOLD_ITEMS
    positions = [header, caution, *_positions(text, wanted)]
    assert positions == sorted(positions)
    assert annex == -1 or positions[-1] < annex  # nothing a reader needs is in an annex
    if decision is Decision.NOT_ASSESSABLE:
        assert "Priority" not in text and "Probability:" not in text
        assert "not assessable: image unlike the training data" in text
    assert "Verification Flag: UNVERIFIED" in text


def test_research_model_caution_is_shown_in_place(tmp_path: Path) -> None:
    source = dicomgen.radiograph()
    research = ModelIdentity("cxr-triage", "0.1.0-dev", "abc", not_for_clinical_use=True)
    path = write_sr(build_triage_sr([source], _finding(source, Decision.SUSPECTED), research,
                                    manufacturer="tests"), tmp_path / "sr.dcm")
    text = rendered_text(path)
    caution = text.index('Tracking Identifier = "NOT FOR CLINICAL USE - not verified"')
    assert caution < text.index("COVID-19: Suspected")
    assert f"Series: {HEADER[Decision.SUSPECTED]} - RESEARCH (#9901)" in text


@pytest.mark.parametrize("decision", list(Decision))
@pytest.mark.parametrize("revision", [1, 2, 10, 9_999])
@pytest.mark.parametrize("research", [False, True])
def test_series_description_states_decision_priority_and_revision(
    decision: Decision, revision: int, research: bool
) -> None:
    finding = StudyFinding(decision, 0.5, 0.1, ("1.2.3",))
    text = series_description(finding, revision=revision, not_for_clinical_use=research)
    assert len(text) <= SERIES_DESCRIPTION_MAX
    result = HEADER[decision].removeprefix("AI COVID-19 triage: ")
    label = "AI COVID-19 triage" if revision == 1 else f"AI COVID-19 triage rev {revision}"
    assert text.startswith(f"{label}: {result}")
    if research:  # left out only when it doesn't fit; a first report always has room
        fits = len(text) + len(" - RESEARCH") <= SERIES_DESCRIPTION_MAX
        assert text.endswith(" - RESEARCH") or not fits
        assert text.endswith(" - RESEARCH") or revision > 1
    else:
        assert "RESEARCH" not in text
    pydicom.dataelem.DataElement(0x0008103E, "LO", text)  # a valid LO value
    assert "\\" not in text


def test_revision_is_its_own_series(tmp_path: Path) -> None:
    source = dicomgen.radiograph()
    first = build_triage_sr([source], _finding(source, Decision.NOT_SUSPECTED), MODEL,
                            manufacturer="tests")
    old = PredecessorRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID),
                         str(first.SOPInstanceUID))
    second = pydicom.dcmread(write_sr(
        build_triage_sr([source], _finding(source, Decision.SUSPECTED), MODEL,
                        manufacturer="tests", predecessor=old, revision=2,
                        series_number=sr_series_number(1)), tmp_path / "rev2.dcm"))
    assert (first.SeriesNumber, second.SeriesNumber) == (9901, 9902)
    assert second.SeriesInstanceUID != first.SeriesInstanceUID
    assert second.InstanceNumber == 1
    assert second.SeriesDescription == "AI COVID-19 triage rev 2: SUSPECTED - HIGH PRIORITY"
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == first.SeriesInstanceUID
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert [sr_series_number(n) for n in range(3)] == [9901, 9902, 9903]
