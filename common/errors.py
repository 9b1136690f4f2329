"""The root of every package's exception hierarchy, so the CLI can turn them into messages."""


class TriageError(Exception):
    """An error with a message meant for the operator: what was wrong and what to do."""
