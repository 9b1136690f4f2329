"""fsync of a file or directory by path: what makes a write or rename survive a crash; and
JSON written whole or not at all (a temporary file renamed over the target)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def replace_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``path`` atomically: readers see the old file or the new."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    tmp.replace(path)


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync ``path``; with ``directory``, a folder (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
