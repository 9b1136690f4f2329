"""C-STORE response statuses the node returns (PS3.4 Annex B.2.3, PS3.7 Annex C).

Codes within a class (0xA7xx, 0xC0xx) are ours to assign; each has one meaning here.
0xC2xx codes are avoided because pynetdicom uses 0xC210-0xC213 for its own handler failures.
0xA7xx tells the sender to try again later; 0xA9xx and 0xCxxx say that resending won't help.
"""

from __future__ import annotations

import enum


class StoreStatus(enum.IntEnum):
    """Every status ``handle_store`` can return."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # storage failed for a reason other than space, or out of memory
    OUT_OF_RESOURCES_DISK_FULL = 0xA701  # free space below TRIAGE_MIN_FREE_BYTES or ENOSPC
    OUT_OF_RESOURCES_DATABASE = 0xA702  # the database could not record the instance
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # dataset SOP Class differs from the request
    CANNOT_UNDERSTAND = 0xC000  # the dataset could not be parsed
    CANNOT_UNDERSTAND_INVALID_UID = 0xC001  # a required UID is missing or malformed
    CANNOT_UNDERSTAND_NO_PIXEL_DATA = 0xC002  # no (complete) Pixel Data, Rows or Columns
    CANNOT_UNDERSTAND_UID_MISMATCH = 0xC003  # dataset SOP Instance UID differs from the request
    CANNOT_UNDERSTAND_TOO_LARGE = 0xC004  # a deflated dataset inflates beyond MAX_INFLATED_BYTES
    CANNOT_UNDERSTAND_UNEXPECTED = 0xC0FF  # an unexpected error while checking or storing
