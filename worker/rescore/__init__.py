"""Nightly re-scoring: runs, comparison, distributed batches, drift, progress and the CLI."""
