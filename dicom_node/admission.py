"""Who may associate: the calling AE allow-list, deny by default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    """Calling AE policy. An empty allow-list admits nobody unless ``allow_any`` is set."""

    allowed_aets: frozenset[str]
    allow_any: bool = False

    def refusal(self, calling_ae: str) -> str | None:
        """``None`` when ``calling_ae`` may associate, else the reason it may not."""
        if self.allow_any:
            return None
        title = calling_ae.strip()
        if title in self.allowed_aets:
            return None
        if not self.allowed_aets:
            return f"calling AE {title!r} refused: TRIAGE_ALLOWED_AETS is empty (deny by default)"
        return f"calling AE {title!r} is not in TRIAGE_ALLOWED_AETS"
