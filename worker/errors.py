"""The worker package's exception base."""

from common.errors import TriageError


class WorkerError(TriageError):
    """Scoring, reporting or delivery cannot go on; the message says why and what to do."""
