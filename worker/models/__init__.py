"""The model store and the live model: import, list, promote, roll back (docs/go-live.md)."""
