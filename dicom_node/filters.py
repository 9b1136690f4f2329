"""Triage rules as data: which received images are candidates for scoring.

Rules map a DICOM keyword to the values that qualify (case-insensitive); the empty string means
"absent or empty qualifies". They can be replaced by a JSON file (``TRIAGE_FILTER_FILE``).
The verdict is decided from values the header check already read (:attr:`TriageRules.keywords`),
before the instance is committed, so evaluating it never touches the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from dicom_node.errors import NodeError

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "Modality": ("CR", "DX"),
    "BodyPartExamined": ("CHEST", ""),
    "ViewPosition": ("PA", "AP", ""),
}


@dataclass(frozen=True)
class Verdict:
    """Whether an image should be scored, and if not, why."""

    candidate: bool
    reason: str | None = None


@dataclass(frozen=True)
class TriageRules:
    """Allowed values per attribute; every rule must pass."""

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_RULES))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> TriageRules:
        rules: dict[str, tuple[str, ...]] = {}
        for keyword, values in data.items():
            if tag_for_keyword(keyword) is None:
                raise NodeError(f"triage rule names unknown DICOM keyword {keyword!r}")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise NodeError(f"triage rule {keyword!r} must be a list of strings")
            rules[keyword] = tuple(v.strip().upper() for v in values)
        return cls(rules=rules)

    @classmethod
    def from_file(cls, path: Path) -> TriageRules:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise NodeError(f"can't read triage rules from {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise NodeError(f"triage rules in {path} must be a JSON object of keyword -> values")
        return cls.from_mapping(data)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The attributes the rules look at (the header check reads them)."""
        return tuple(self.rules)

    def evaluate(self, attributes: Mapping[str, str]) -> Verdict:
        """Check header values (keyword -> text) against every rule; the first failure is why."""
        for keyword, allowed in self.rules.items():
            value = (attributes.get(keyword) or "").strip().upper()
            if value not in allowed:
                shown = value or "(empty)"
                listed = ", ".join(v or "(empty)" for v in allowed)
                return Verdict(False, f"{keyword} {shown} is not one of {listed}")
        return Verdict(True)
