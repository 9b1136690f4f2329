"""Points where tests inject faults; in production each hook does nothing.

The worker and ``rescore`` call these module attributes at fixed moments. A test entry point
(``tests/support/hooked_cli.py``) replaces them before the command runs, so fault-injection
tests need no setting in the product: no ``TRIAGE_*`` variable reaches these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def _nothing(_: object) -> None:
    return None


AfterClaim = Callable[[Sequence[int]], None]
AfterRescoreBatch = Callable[[int], None]

#: Called by live scoring with the claimed instance ids, before the ensemble is loaded.
after_claim: AfterClaim = _nothing

#: Called by local re-scoring with the number of batches recorded so far.
after_rescore_batch: AfterRescoreBatch = _nothing
