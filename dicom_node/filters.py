"""Triage rules as data: which received images are candidates for scoring (frontal chest CR/DX).

Three kinds of rule, all case-insensitive, replaceable by a JSON file (``TRIAGE_FILTER_FILE``):

- ``accept``: keyword -> the values that qualify; ``""`` means "absent or empty qualifies";
- ``refuse``: named reasons (lateral view, decubitus view, not a chest, localizer, one-sided
  image), each a list of keywords whose value is refused when one of its words (tokens split on
  anything but letters and digits) is listed, unless a word of ``unless`` appears too;
  ``first`` looks at the first token only (the row direction of Patient Orientation);
  ``when_empty`` applies the rule only while all those attributes are empty (a View Position,
  when present, is authoritative; an image without Body Part Examined must not contradict a
  chest anywhere else).

A flat JSON object of keyword -> values (the older format) is read as ``accept`` rules alone.
The verdict is decided from values the header check already read (:attr:`TriageRules.keywords`),
before the instance is committed, so evaluating it never touches the file. docs/safety-gate.md
has the table of the defaults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import tag_for_keyword

from dicom_node.errors import NodeError

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "Modality": ("CR", "DX"),
    "BodyPartExamined": ("CHEST", "THORAX", ""),
    "ViewPosition": ("PA", "AP", ""),
}
ACCEPT_REASONS = {  # the named reason of a refused ``accept`` rule
    "Modality": "not a radiograph",
    "BodyPartExamined": "not a chest",
    "ViewPosition": "not a frontal view",
}
DESCRIPTIONS = ("SeriesDescription", "StudyDescription", "ProtocolName")
CHEST_WORDS = ("CHEST", "THORAX", "THORACIC", "THX", "LUNG", "LUNGS", "CXR", "TORAX")
NON_CHEST_WORDS = (
    "TEETH", "TOOTH", "DENTAL", "DENT", "PANO", "PANORAMIC", "OPG", "OPT", "MANDIBLE", "JAW",
    "SKULL", "HEAD", "SINUS", "SINUSES", "FACE", "ORBIT", "NECK", "CSPINE", "TSPINE", "LSPINE",
    "SPINE", "PELVIS", "HIP", "HIPS", "SACRUM", "ABDOMEN", "ABD", "KUB", "FEMUR", "KNEE",
    "KNEES", "TIBIA", "FIBULA", "ANKLE", "FOOT", "FEET", "TOE", "TOES", "CALCANEUS", "HUMERUS",
    "ELBOW", "FOREARM", "WRIST", "HAND", "HANDS", "FINGER", "THUMB", "SHOULDER", "CLAVICLE",
    "SCAPULA", "BREAST", "MAMMO", "MAMMOGRAPHY", "LEG", "ARM", "EXTREMITY", "PHANTOM",
)


@dataclass(frozen=True)
class RefuseRule:
    """Refuse an image when a listed word appears in one of ``keywords`` (see module doc)."""

    reason: str
    keywords: tuple[str, ...]
    words: tuple[str, ...]
    unless: tuple[str, ...] = ()
    first: bool = False
    when_empty: tuple[str, ...] = ()

    def refuses(self, attributes: Mapping[str, str]) -> str | None:
        """The reason with the attribute that triggered it, or ``None``."""
        if any(_value(attributes, keyword) for keyword in self.when_empty):
            return None
        for keyword in self.keywords:
            value = _value(attributes, keyword)
            tokens = _tokens(value)
            looked_at = tokens[:1] if self.first else tokens
            hit = next((t for t in looked_at if t in self.words), None)
            if hit is not None and not any(t in self.unless for t in tokens):
                return f"{self.reason}: {keyword} {value[:64]!r} names {hit}"
        return None


DEFAULT_REFUSE: tuple[RefuseRule, ...] = (
    RefuseRule("decubitus view", ("ViewPosition", "SeriesDescription", "ProtocolName"),
               ("DECUB", "DECUBITUS", "LLD", "RLD")),
    RefuseRule("lateral view", ("ViewPosition",), ("LL", "RL", "LAT", "LATERAL", "RLO", "LLO")),
    RefuseRule("lateral view", ("SeriesDescription", "ProtocolName"),
               ("LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT", "SEITLICH"),
               when_empty=("ViewPosition",)),
    RefuseRule("lateral view", ("PatientOrientation",), ("A", "P"), first=True),
    RefuseRule("localizer", ("ImageType",), ("LOCALIZER", "SCOUT")),
    RefuseRule("not a chest", DESCRIPTIONS, NON_CHEST_WORDS, unless=CHEST_WORDS),
    RefuseRule("one-sided image without a body part or view", ("ImageLaterality",), ("L", "R"),
               when_empty=("BodyPartExamined", "ViewPosition")),
)


def _value(attributes: Mapping[str, str], keyword: str) -> str:
    return (attributes.get(keyword) or "").strip().upper()


def _tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[^A-Z0-9]+", value) if t]


def _check_accept(rules: Mapping[str, tuple[str, ...]],
                  attributes: Mapping[str, str]) -> str | None:
    for keyword, allowed in rules.items():
        value = _value(attributes, keyword)
        if value not in allowed:
            shown = value or "(empty)"
            listed = ", ".join(v or "(empty)" for v in allowed)
            named = ACCEPT_REASONS.get(keyword, "refused by the triage rules")
            return f"{named}: {keyword} {shown} is not one of {listed}"
    return None


@dataclass(frozen=True)
class Verdict:
    """Whether an image should be scored, and if not, why."""

    candidate: bool
    reason: str | None = None


def _keyword_values(data: object, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict):
        raise NodeError(f"triage rules {where} must be a JSON object of keyword -> values")
    rules: dict[str, tuple[str, ...]] = {}
    for keyword, values in data.items():
        _check_keyword(keyword)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise NodeError(f"triage rule {keyword!r} must be a list of strings")
        rules[keyword] = tuple(v.strip().upper() for v in values)
    return rules


def _check_keyword(keyword: str) -> None:
    if tag_for_keyword(keyword) is None:
        raise NodeError(f"triage rule names unknown DICOM keyword {keyword!r}")


def _refuse_rule(entry: object) -> RefuseRule:
    if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
        raise NodeError("each triage 'refuse' rule must be an object with a 'reason' string")
    lists = {}
    for key in ("keywords", "words", "unless"):
        values = entry.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise NodeError(f"triage 'refuse' rule {entry['reason']!r}: {key} must be a list "
                            "of strings")
        lists[key] = tuple(v.strip().upper() for v in values)
    for key in ("keywords", "when_empty"):
        values = entry.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise NodeError(f"triage 'refuse' rule {entry['reason']!r}: {key} must be a list "
                            "of DICOM keywords")
        for keyword in values:
            _check_keyword(keyword)
    return RefuseRule(entry["reason"], tuple(entry["keywords"]), lists["words"], lists["unless"],
                      bool(entry.get("first", False)), tuple(entry.get("when_empty", [])))


@dataclass(frozen=True)
class TriageRules:
    """Refuse rules (the first that matches is the reason) and accept rules (all must pass)."""

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_RULES))
    refuse: tuple[RefuseRule, ...] = DEFAULT_REFUSE

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> TriageRules:
        """The ``accept``/``refuse`` format, or a flat keyword -> values map (accept only)."""
        if "accept" not in data:
            return cls(rules=_keyword_values(dict(data), "file"), refuse=())
        unknown = set(data) - {"accept", "refuse"}
        if unknown:
            raise NodeError(f"unknown triage rule sections {sorted(unknown)}; use accept and "
                            "refuse")
        refuse = data.get("refuse", [])
        if not isinstance(refuse, list):
            raise NodeError("triage 'refuse' must be a list of rules")
        return cls(rules=_keyword_values(data["accept"], "'accept'"),
                   refuse=tuple(_refuse_rule(e) for e in refuse))

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
        names = [*self.rules]
        for rule in self.refuse:
            names.extend(rule.keywords)
            names.extend(rule.when_empty)
        return tuple(dict.fromkeys(names))

    def evaluate(self, attributes: Mapping[str, str]) -> Verdict:
        """Check header values (keyword -> text); the first refusal is the recorded reason."""
        for rule in self.refuse:
            reason = rule.refuses(attributes)
            if reason is not None:
                return Verdict(False, reason)
        reason = _check_accept(self.rules, attributes)
        return Verdict(reason is None, reason)
