"""UID validation (PS3.5 §9.1): checked before a UID is ever used to build a path.

Two levels: *safe* (digits and dots, no empty component, at most 64 characters; always required,
since the UID becomes a path component) and *strict* (no leading zeros in a component either).
Older modalities emit components such as ``01``; the node accepts those unless
``TRIAGE_STRICT_UIDS`` is set, so such images are not lost over a cosmetic violation.
"""

from __future__ import annotations

import re

from dicom_node.errors import NodeError

_SAFE_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_STRICT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
MAX_UID_LENGTH = 64


class InvalidUIDError(NodeError):
    """A UID that is missing or does not follow PS3.5 §9.1."""


def is_valid_uid(value: object, strict: bool = True) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID of at most 64 characters."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UID_LENGTH:
        return False
    pattern = _STRICT_PATTERN if strict else _SAFE_PATTERN
    return pattern.match(value) is not None


def require_uid(value: object, name: str, strict: bool = False) -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidUIDError` naming the attribute."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidUIDError(f"{name} is missing")
    if not is_valid_uid(text, strict=strict):
        shown = text[:80].encode("ascii", "backslashreplace").decode("ascii")
        rule = "PS3.5 9.1" if strict else "digits and dots, at most 64 characters"
        raise InvalidUIDError(f"{name} {shown!r} is not a valid DICOM UID ({rule})")
    return text
