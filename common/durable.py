"""fsync of a file or directory by path: what makes a write or rename survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync ``path``; with ``directory``, a folder (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
