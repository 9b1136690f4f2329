"""``python -m tests.support.hooked_cli ARGS``: ``cxr-triage ARGS`` with fault hooks installed.

The product has no fault-injection settings; its hook points (:mod:`worker.hooks`) do nothing.
This test-only entry point reads its own environment variables, replaces the hooks, then runs
the real command line (``cxr_triage.cli.main``). Celery's prefork pool processes are forked
from this process, so they inherit the hooks.

``CXR_TEST_HOLD_AFTER_CLAIM_S``
    live scoring sleeps this long after claiming its batch (a worker to kill mid-task).
``CXR_TEST_KILL_AFTER_RESCORE_BATCHES``
    ``rescore`` SIGKILLs itself once it recorded this many batches (a run to resume).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker import hooks

HOLD_AFTER_CLAIM_S = "CXR_TEST_HOLD_AFTER_CLAIM_S"
KILL_AFTER_RESCORE_BATCHES = "CXR_TEST_KILL_AFTER_RESCORE_BATCHES"
MODULE = "tests.support.hooked_cli"
ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger(__name__)


def install(env: Mapping[str, str]) -> None:
    """Replace the hooks that ``env`` asks for."""
    hold_s = float(env.get(HOLD_AFTER_CLAIM_S, "0") or 0)
    if hold_s > 0:
        def hold(ids: Sequence[int]) -> None:
            logger.warning("test hook: holding %d claimed instances for %.0f s", len(ids), hold_s)
            time.sleep(hold_s)

        hooks.after_claim = hold
    kill_after = int(env.get(KILL_AFTER_RESCORE_BATCHES, "0") or 0)
    if kill_after > 0:
        def kill(batches: int) -> None:
            if batches >= kill_after:
                logger.warning("test hook: %d batches recorded, SIGKILL", batches)
                os.kill(os.getpid(), signal.SIGKILL)

        hooks.after_rescore_batch = kill


def command(*args: str) -> list[str]:
    """The argv that runs ``cxr-triage ARGS`` through this entry point."""
    return [sys.executable, "-m", MODULE, *args]


def environment(base: Mapping[str, str], hook_values: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the hook variables, with the repository on ``PYTHONPATH`` so that the
    ``tests`` package imports whatever the working directory."""
    path = [str(ROOT), *filter(None, [base.get("PYTHONPATH")])]
    return {**base, **hook_values, "PYTHONPATH": os.pathsep.join(path)}


def main(argv: Sequence[str] | None = None) -> int:
    from cxr_triage.cli import main as cli_main

    install(os.environ)
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
