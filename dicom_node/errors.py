"""Errors of the DICOM node."""

from common.errors import TriageError


class NodeError(TriageError):
    """The node can't start or can't do what was asked; the message says why and what to do."""
