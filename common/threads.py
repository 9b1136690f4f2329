"""How many threads torch gets by default, so that a busy neighbour does not stall it.

torch's CPU ops split work over OpenMP threads that meet at a barrier after each op. By default
a thread that arrives first spins at the barrier for a while instead of sleeping. When another
process takes one of the cores, the spinning siblings keep the late thread off the CPU: on a
2-core machine, torch with 2 threads fell to about a third of its speed beside one busy process
(docs/benchmarks.md, "Threads"). So:

- OpenMP threads sleep when they wait (``OMP_WAIT_POLICY=PASSIVE``) and give their core back.
  OpenMP reads this once, when torch loads, so ``worker``, ``rescore`` and ``train`` call
  :func:`prefer_passive_waits` before they import torch, and ``up`` sets it for its children.
  An ``OMP_WAIT_POLICY`` already in the environment is kept.
- The thread count is one per core this process may run on (``os.sched_getaffinity``), less
  the cores left to others: ``up`` keeps one for the node and the web app on the same machine.

``TRIAGE_TORCH_THREADS`` (worker, rescore, up) and ``TRIAGE_TRAIN_THREADS`` (train) override the
count.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all CPUs where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def inference_threads(reserve: int = 0) -> int:
    """torch intra-op threads for scoring: the usable cores less ``reserve`` (kept for other
    processes on the machine); at least one."""
    return max(1, usable_cores() - reserve)


def prefer_passive_waits() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless set; ``False`` if torch was already loaded (then
    the setting comes too late for this process and only reaches its children)."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
    if "torch" in sys.modules:
        logger.debug("torch already loaded: %s=%s applies to child processes only",
                     WAIT_POLICY_ENV, os.environ[WAIT_POLICY_ENV])
        return False
    return True
