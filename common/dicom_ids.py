"""Our DICOM implementation identity (PS3.7 D.3.3.2, PS3.10 7.1), defined once.

The Implementation Class UID is a UUID-derived UID under the ``2.25`` root (PS3.5 B.2): no
registration is needed and it is unique by construction. It names this implementation, not a
release; the version name changes with every release. Both go into the A-ASSOCIATE-RQ/AC of the
node and of the SR sender and into the file meta of every file we write.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from common.version import package_version

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# uuid.uuid4().int taken once (2026-12-01); never change it.
IMPLEMENTATION_CLASS_UID = "2.25.76900049203149639982048261425497408622"
_VERSION_PREFIX = "CXR_TRIAGE_"
_MAX_VERSION_NAME = 16  # PS3.7 D.3.3.2.3: SH, 1 to 16 characters


@cache
def implementation_version_name() -> str:
    """``CXR_TRIAGE_`` + the package version, cut to the 16 characters PS3.7 allows."""
    release = package_version().split("+")[0]
    allowed = "".join(c for c in release if c.isalnum() or c in "._")
    return (_VERSION_PREFIX + allowed)[:_MAX_VERSION_NAME]


def stamp_implementation(ds: Dataset) -> None:
    """Set our Implementation Class UID and version name in ``ds``'s file meta (PS3.10 7.1)."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = implementation_version_name()
