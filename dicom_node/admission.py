"""Who may associate: the calling AE allow-list, deny by default.

One exception keeps container and systemd healthchecks working whatever the allow-list holds:
the healthcheck AE title (TRIAGE_HEALTHCHECK_AET, default ``CXR_HEALTHCHECK``) is admitted only
from a loopback address and only when it proposes nothing but Verification (C-ECHO, PS3.4 A).
Anyone who can open a loopback connection already runs on the node's host; the exception lets
them learn only that the node answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (an IPv4-mapped loopback counts too)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


@dataclass(frozen=True)
class Admission:
    """Calling AE policy. An empty allow-list admits nobody unless ``allow_any`` is set."""

    allowed_aets: frozenset[str]
    allow_any: bool = False
    healthcheck_aet: str = ""

    def refusal(self, calling_ae: str, address: str = "",
                abstract_syntaxes: Iterable[str] = ()) -> str | None:
        """``None`` when ``calling_ae`` may associate from ``address``, else the reason not.

        ``abstract_syntaxes`` are the SOP classes the association proposes; they matter only
        for the healthcheck AE title.
        """
        if self.allow_any:
            return None
        title = calling_ae.strip()
        if title in self.allowed_aets:
            return None
        if self.healthcheck_aet and title == self.healthcheck_aet:
            return self._healthcheck_refusal(title, address, abstract_syntaxes)
        if not self.allowed_aets:
            return f"calling AE {title!r} refused: TRIAGE_ALLOWED_AETS is empty (deny by default)"
        return f"calling AE {title!r} is not in TRIAGE_ALLOWED_AETS"

    @staticmethod
    def _healthcheck_refusal(title: str, address: str,
                             abstract_syntaxes: Iterable[str]) -> str | None:
        if not is_loopback(address):
            return (f"calling AE {title!r} is the healthcheck AE title, admitted only from "
                    f"loopback, not from {address}")
        others = sorted(set(abstract_syntaxes) - {VERIFICATION_SOP_CLASS})
        if others:
            return (f"calling AE {title!r} is the healthcheck AE title, admitted for "
                    f"Verification only, but proposed {', '.join(others)}")
        return None


def empty_allow_list_warning(allowed_aets: tuple[str, ...] | frozenset[str],
                             allow_any: bool) -> str | None:
    """The start-up warning when no modality may send (deny by default), else ``None``."""
    if allow_any or any(title.strip() for title in allowed_aets):
        return None
    return ("TRIAGE_ALLOWED_AETS is empty: every association will be refused (deny by default); "
            "list the calling AE titles of your modalities and PACS routers there, or pass "
            "--allow-aet TITLE")
