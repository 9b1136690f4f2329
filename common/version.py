"""The installed package version (recorded in manifests, file meta and logs)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """``cxr-triage``'s version, or ``0.0.0+source`` in a tree that was not installed."""
    try:
        return version("cxr-triage")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+source"
