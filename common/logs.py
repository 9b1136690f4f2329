"""Log output for every command: text for people, JSON lines for a log shipper.

``TRIAGE_LOG_FORMAT=json`` writes one JSON object per record. Our log lines name what they are
about by a prefix (``study 1.2.3: ...``, ``instance 42 ...``, ``report 7 ...``); the JSON
formatter lifts those ids into their own fields, and adds the Celery task id and name when the
record comes from inside a task. Messages carry no patient names or IDs in either format (see
STYLE.md; tests/unit/test_logging.py and the end-to-end transfer syntax test check it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import SettingError, env_str

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ids our messages name, as "<word> <id>" (STYLE.md: "prefixed with the study or task id").
_ID_PATTERNS = {
    "study_uid": re.compile(r"\bstudy (\d+(?:\.\d+)+)\b"),
    "instance_id": re.compile(r"\binstance (\d+)\b"),
    "report_id": re.compile(r"\breport (\d+)\b"),
    "run_id": re.compile(r"\brun (\d+)\b"),
}
# Libraries whose INFO lines are noise for an operator: migrations and per-message chatter.
QUIET_LOGGERS = ("alembic", "pynetdicom", "kombu", "amqp", "urllib3")


@dataclass(frozen=True)
class LogSettings:
    """How logs are written: ``format`` is ``text`` or ``json`` (TRIAGE_LOG_FORMAT)."""

    format: str = "text"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogSettings:
        d = cls()
        fmt = env_str(env, "LOG_FORMAT", d.format).strip().lower()
        if fmt not in LOG_FORMATS:
            raise SettingError(f"TRIAGE_LOG_FORMAT={fmt!r} is unknown; use one of {LOG_FORMATS}")
        return cls(format=fmt)


def _current_task() -> tuple[str, str] | None:
    """(task id, task name) of the Celery task running in this thread, if any."""
    if "celery" not in sys.modules:  # never import Celery just to log
        return None
    from celery._state import get_current_task

    task = get_current_task()
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    if task is None or not task_id:
        return None
    return str(task_id), str(task.name)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, task, exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, pattern in _ID_PATTERNS.items():
            explicit = getattr(record, key, None)
            found = pattern.search(message)
            if explicit is not None:
                entry[key] = explicit
            elif found:
                entry[key] = int(found[1]) if key.endswith("_id") else found[1]
        task = _current_task()
        if task is not None:
            entry["task_id"], entry["task"] = task
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, settings: LogSettings | None = None) -> None:
    """Root handler on stderr in the chosen format; quiet the libraries' INFO chatter.

    At DEBUG the libraries speak too, except pynetdicom, which logs whole datasets (PHI).
    """
    settings = settings or LogSettings.from_env()
    handler = logging.StreamHandler()
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.WARNING if level != "DEBUG" else logging.NOTSET
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
