"""Scoring: the decision rule, the one ensemble loader, backends and the one batch path."""
