"""``cxr-triage nightly``: run a command (normally ``rescore``) every day at a set time.

A container has no cron; this loop is the nightly re-scoring service of docker/compose.yml.
Each run is a child process, so a crash in one night's run never stops the schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import time
from collections.abc import Sequence

from common.errors import TriageError

LOGGER = logging.getLogger(__name__)


def parse_at(text: str) -> dt.time:
    """``HH:MM`` (24 h, local time)."""
    try:
        return dt.datetime.strptime(text, "%H:%M").time()
    except ValueError as exc:
        raise TriageError(f"--at {text!r}: use HH:MM, for example 02:30") from exc


def next_run(now: dt.datetime, at: dt.time) -> dt.datetime:
    """The first moment at ``at`` that is strictly after ``now``."""
    candidate = now.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + dt.timedelta(days=1)


def run_nightly(at: dt.time, command: Sequence[str], once: bool = False) -> int:
    """Sleep until ``at``, run ``cxr-triage COMMAND``, repeat (or stop after one run)."""
    if not command:
        raise TriageError("give the command to run after --, e.g. -- rescore --send changed")
    while True:
        when = next_run(dt.datetime.now(), at)
        if not once:
            LOGGER.info("next run at %s: cxr-triage %s", when.isoformat(timespec="minutes"),
                        " ".join(command))
            time.sleep(max(0.0, (when - dt.datetime.now()).total_seconds()))
        code = subprocess.run([sys.executable, "-m", "cxr_triage", *command],
                              check=False).returncode
        LOGGER.info("cxr-triage %s exited with %d", command[0], code)
        if once:
            return code
