"""The training package's exception."""

from common.errors import TriageError


class TrainingError(TriageError):
    """Training or evaluation cannot go on; the message names the file or class and what to do."""
