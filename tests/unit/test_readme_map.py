"""The README's module map matches the tree: every package is in it, and every module it names
exists where it says."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.settings_catalog import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| (`[^|]+`)(?:, `[^|]+`)* \|", re.MULTILINE)
_CODE = re.compile(r"`([^`]+)`")


def _module_map() -> list[list[str]]:
    """The first cell of each module-map row, split into its code spans."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Module map", 1)[1].split("###", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [_CODE.findall(cell) for cell in rows]


def _named_paths() -> list[Path]:
    """Every module or folder the map names, resolved against the row's first path."""
    paths = []
    for names in _module_map():
        base = Path(names[0]).parent if names[0].endswith(".py") else Path(names[0])
        for name in names:
            paths.append(ROOT / name if "/" in name else ROOT / base / name)
    return paths


def test_every_module_the_map_names_exists() -> None:
    missing = [str(p.relative_to(ROOT)) for p in _named_paths() if not p.exists()]
    assert missing == []


def test_every_package_and_worker_subpackage_is_in_the_map() -> None:
    named = {p.relative_to(ROOT) for p in _named_paths()}
    folders = {p if p.is_dir() else p.parent for p in (ROOT / n for n in map(str, named))}
    packages = [ROOT / name for name in PACKAGES]
    packages += [p.parent for p in (ROOT / "worker").glob("*/__init__.py")]
    absent = [str(p.relative_to(ROOT)) for p in packages if p not in folders]
    assert absent == []


def test_every_worker_and_node_module_is_in_the_map() -> None:
    named = {p.resolve() for p in _named_paths()}
    modules = [p for package in ("dicom_node", "worker", "db", "common")
               for p in (ROOT / package).rglob("*.py")
               if p.name != "__init__.py" and "migrations" not in p.parts]
    unlisted = [str(p.relative_to(ROOT)) for p in modules
                if p.resolve() not in named and p.parent.resolve() not in named]
    assert unlisted == []
