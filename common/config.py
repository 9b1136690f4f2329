"""Typed readers for ``TRIAGE_*`` environment variables, shared by every package's settings."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "TRIAGE_"
_Settings = TypeVar("_Settings")


class SettingError(ValueError):
    """An environment variable holds a value that can't be used."""


def _raw(env: Mapping[str, str] | None, name: str) -> str | None:
    source = os.environ if env is None else env
    value = source.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(env: Mapping[str, str] | None, name: str, default: str) -> str:
    """Return ``TRIAGE_<name>`` or ``default``."""
    value = _raw(env, name)
    return default if value is None else value


def env_int(env: Mapping[str, str] | None, name: str, default: int) -> int:
    """Return ``TRIAGE_<name>`` as an int."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise SettingError(f"{PREFIX}{name}={value!r} is not an integer") from exc


def env_float(env: Mapping[str, str] | None, name: str, default: float) -> float:
    """Return ``TRIAGE_<name>`` as a float."""
    value = _raw(env, name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise SettingError(f"{PREFIX}{name}={value!r} is not a number") from exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(env: Mapping[str, str] | None, name: str, default: bool) -> bool:
    """Return ``TRIAGE_<name>`` as a bool (1/0, true/false, yes/no, on/off)."""
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(f"{PREFIX}{name}={value!r} is not a boolean (use true or false)")


def env_list(env: Mapping[str, str] | None, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``TRIAGE_<name>`` split on commas, blanks dropped."""
    value = _raw(env, name)
    if value is None:
        return default
    return tuple(item.strip() for item in value.split(",") if item.strip())


def env_path(env: Mapping[str, str] | None, name: str, default: Path) -> Path:
    """Return ``TRIAGE_<name>`` as a path."""
    value = _raw(env, name)
    return default if value is None else Path(value)


def env_opt_path(env: Mapping[str, str] | None, name: str) -> Path | None:
    """Return ``TRIAGE_<name>`` as a path, or ``None``."""
    value = _raw(env, name)
    return None if value is None else Path(value)


def default_var_dir() -> Path:
    """The directory that holds local state on embedded defaults (``./var``)."""
    return Path(os.environ.get(PREFIX + "VAR_DIR", "var"))


def apply_overrides(settings: _Settings, **flags: Any) -> _Settings:
    """A copy of the frozen dataclass ``settings`` with each flag that was given replaced.

    A flag whose value is ``None`` was not given and leaves the setting as it is. A dotted
    name (``**{"rescore.batch": 4}``) replaces a field of a nested settings dataclass.
    """
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flags.items():
        if value is None:
            continue
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = apply_overrides(direct.get(head, getattr(settings, head)), **inner)
    return dataclasses.replace(settings, **direct) if direct else settings  # type: ignore[type-var]
