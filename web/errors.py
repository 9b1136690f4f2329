"""The web package's one base exception."""

from __future__ import annotations

from common.errors import TriageError


class WebError(TriageError):
    """A web app setting, account or request that can't be used; the message says why."""
