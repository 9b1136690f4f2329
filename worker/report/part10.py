"""Writing the objects we make (SR, result image) as Part 10 files that survive a crash."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from common.dicom_ids import stamp_implementation
from common.durable import fsync_path


def write_durably(ds: Dataset, path: Path) -> Dataset:
    """Write ``ds`` to ``path`` atomically and read its header back (PS3.10 7.1).

    The file goes to a temporary name beside ``path``, is fsynced and renamed over ``path``;
    the directory is fsynced too. Raises ``OSError`` or ``ValueError`` (the temporary file
    removed) when it can't be written; callers say what the object was.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    stamp_implementation(ds)
    try:
        with open(tmp, "wb") as fh:
            dcmwrite(fh, ds, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, ValueError):
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent, directory=True)
    return dcmread(path, stop_before_pixels=True)
