"""``rescore --send`` modes, importable without the model stack (the CLI builds its parser
from them)."""

from __future__ import annotations

import enum


class SendMode(enum.StrEnum):
    """``--send``: which studies get a new SR."""

    CHANGED = "changed"  # decision differs from the previous model version's
    ALL = "all"  # every study with a result under the new version
    NONE = "none"  # scores only
