"""What a peer proposed, in words for the log: refused associations and presentation contexts.

PS3.8 Table 9-18 gives the presentation context results; PS3.8 §7.1.1.13 the proposal items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.uid import UID

LOGGER = logging.getLogger(__name__)

# PS3.8 Table 9-18: Result/Reason of an A-ASSOCIATE-AC presentation context item.
CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason (provider rejection)",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


def uid_label(uid: str) -> str:
    """``1.2.840.10008.1.2.5 (RLE Lossless)``; the bare UID when pydicom doesn't know it."""
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else str(uid)


def describe_context(abstract_syntax: str, transfer_syntaxes: Iterable[str]) -> str:
    """One proposed context: abstract syntax and every transfer syntax offered."""
    offered = ", ".join(uid_label(ts) for ts in transfer_syntaxes) or "none"
    return f"abstract syntax {uid_label(abstract_syntax)}, transfer syntaxes [{offered}]"


def proposed_contexts(primitive: Any) -> dict[int, tuple[str, list[str]]]:
    """context id -> (abstract syntax, proposed transfer syntaxes) of an A-ASSOCIATE-RQ."""
    contexts = getattr(primitive, "presentation_context_definition_list", None) or []
    return {
        int(ctx.context_id): (str(ctx.abstract_syntax), [str(ts) for ts in ctx.transfer_syntax])
        for ctx in contexts
    }


def describe_proposal(primitive: Any) -> str:
    """Every context of an A-ASSOCIATE-RQ, for a refused association's log line."""
    contexts = proposed_contexts(primitive)
    return "; ".join(describe_context(abstract, syntaxes)
                     for abstract, syntaxes in contexts.values()) or "no presentation contexts"


# A storescu that proposes everything it knows (dcmtk's default: 128 contexts) would otherwise
# fill the log; the first few refused abstract syntaxes say enough, DEBUG lists them all.
MAX_LOGGED_SYNTAXES = 8


def log_refused_contexts(calling_ae: str, address: str, primitive: Any,
                         rejected: Sequence[Any]) -> int:
    """Log, in one WARNING line, the presentation contexts the node refused in an association.

    Each refused abstract syntax is named with its result (PS3.8 Table 9-18) and every transfer
    syntax the peer proposed for it. Returns how many contexts were refused.
    """
    if not rejected:
        return 0
    proposed = proposed_contexts(primitive)
    by_syntax: dict[tuple[str, str], list[str]] = {}
    for context in rejected:
        abstract, syntaxes = proposed.get(
            int(context.context_id),
            (str(context.abstract_syntax), [str(ts) for ts in context.transfer_syntax]),
        )
        reason = CONTEXT_RESULTS.get(int(context.result or 2), f"result {context.result}")
        offered = by_syntax.setdefault((abstract, reason), [])
        offered.extend(ts for ts in syntaxes if ts not in offered)
    described = [f"{reason}: {describe_context(abstract, syntaxes)}"
                 for (abstract, reason), syntaxes in by_syntax.items()]
    shown = described[:MAX_LOGGED_SYNTAXES]
    more = len(described) - len(shown)
    LOGGER.warning(
        "association from calling AE %r (%s): %d of %d presentation contexts refused: %s%s",
        calling_ae.strip(), address, len(rejected), len(proposed), " | ".join(shown),
        f" | and {more} more abstract syntaxes (--log-level DEBUG lists them)" if more else "",
    )
    if more:
        LOGGER.debug("association from calling AE %r: every refused context: %s",
                     calling_ae.strip(), " | ".join(described))
    return len(rejected)
