"""UID validation and the triage rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.errors import NodeError
from dicom_node.filters import TriageRules
from dicom_node.uids import InvalidUIDError, is_valid_uid, require_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.1", "0.0", "1.2.3." + "4" * 58])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert require_uid(uid, "SOPInstanceUID", strict=True) == uid


@pytest.mark.parametrize(
    "uid",
    ["", "1", "1..2", ".1.2", "1.2.", "1.2.a", "../../etc/passwd", "1.2/3", "1.2.3\\4",
     "1.2." + "3" * 63, "1.2.3 4"],
)
def test_invalid_uids_never_reach_a_path(uid: str) -> None:
    assert not is_valid_uid(uid, strict=False)
    with pytest.raises(InvalidUIDError):
        require_uid(uid, "SOPInstanceUID")


def test_leading_zero_components_accepted_unless_strict() -> None:
    legacy = "999.999.01.23.45.6789"
    assert require_uid(legacy, "SOPInstanceUID") == legacy
    with pytest.raises(InvalidUIDError, match=r"PS3\.5"):
        require_uid(legacy, "SOPInstanceUID", strict=True)


def test_missing_uid_named_in_error() -> None:
    with pytest.raises(InvalidUIDError, match="StudyInstanceUID is missing"):
        require_uid(None, "StudyInstanceUID")


def _header(**values: str) -> dict[str, str]:
    return dict(values)


@pytest.mark.parametrize(
    ("values", "candidate", "reason"),
    [
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}, True, None),
        ({"Modality": "DX", "ViewPosition": "AP"}, True, None),
        ({"Modality": "dx", "BodyPartExamined": "chest"}, True, None),
        ({"Modality": "CT", "BodyPartExamined": "CHEST"}, False, "not a radiograph: Modality CT"),
        ({"Modality": "CR", "BodyPartExamined": "HIP"}, False,
         "not a chest: BodyPartExamined HIP"),
        ({"Modality": "DX", "ViewPosition": "LL"}, False, "lateral view: ViewPosition 'LL'"),
        ({}, False, "not a radiograph: Modality (empty)"),
    ],
)
def test_default_rules(values: dict[str, str], candidate: bool, reason: str | None) -> None:
    verdict = TriageRules().evaluate(_header(**values))
    assert verdict.candidate is candidate
    if reason is None:
        assert verdict.reason is None
    else:
        assert verdict.reason is not None and verdict.reason.startswith(reason)


def test_rules_from_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"Modality": ["DX"], "ViewPosition": ["PA", "LL"]}))
    rules = TriageRules.from_file(path)
    assert rules.keywords == ("Modality", "ViewPosition")  # what the header check reads
    assert rules.evaluate(_header(Modality="DX", ViewPosition="LL")).candidate
    assert not rules.evaluate(_header(Modality="CR", ViewPosition="PA")).candidate


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "can't read"), ('["CR"]', "JSON object"), ('{"NotAKeyword": ["x"]}', "unknown"),
     ('{"Modality": "CR"}', "list of strings")],
)
def test_bad_rules_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(NodeError, match=message):
        TriageRules.from_file(path)
