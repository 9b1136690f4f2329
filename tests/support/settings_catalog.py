"""Which ``TRIAGE_*`` variables the code reads, found in the source of every package.

Used by the tests that keep docker/compose.yml (it may only set variables the code reads) and
the README's configuration table true.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.config import PREFIX

PACKAGES = ("common", "cxr_triage", "db", "dicom_node", "worker", "training", "web")
_READ = re.compile(r"env_[a-z_]+\(\s*env,\s*\"([A-Z0-9_]+)\"")
_DIRECT = re.compile(r"\"(TRIAGE_[A-Z0-9_]+)\"")


def settings_read_by_code(root: Path | None = None) -> set[str]:
    """Every ``TRIAGE_*`` name that a settings reader or the code itself looks up."""
    base = root or Path(__file__).resolve().parents[2]
    names: set[str] = set()
    for package in PACKAGES:
        for path in (base / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names.update(PREFIX + name for name in _READ.findall(text))
            names.update(_DIRECT.findall(text))
    return names
