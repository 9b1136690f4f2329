"""The site's acceptance criteria (``TRIAGE_ACCEPTANCE_FILE``, YAML or JSON) and the verdict.

Example (docs/go-live.md)::

    min_sensitivity_lower: 0.85   # lower 95 % bound of sensitivity at the threshold
    min_specificity_lower: 0.30
    min_auc_lower: 0.70
    min_positives: 50
    min_negatives: 50
    max_not_assessable_rate: 0.10
    target_sensitivity: 0.95      # what --recalibrate aims for
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.errors import TriageError
from worker.validation.stats import Figures


class ValidationError(TriageError):
    """Local validation can't run, or its inputs are wrong."""


@dataclass(frozen=True)
class AcceptanceCriteria:
    """What a validation must show before its model may go live (defaults: the issue's
    example; a site sets its own)."""

    min_sensitivity_lower: float = 0.85
    min_specificity_lower: float = 0.0
    min_auc_lower: float = 0.5
    min_positives: int = 50
    min_negatives: int = 50
    max_not_assessable_rate: float = 1.0
    target_sensitivity: float = 0.95

    @classmethod
    def load(cls, path: Path | None) -> AcceptanceCriteria:
        """The criteria in ``path`` (keys above; unknown keys are an error), else defaults."""
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ValidationError(f"cannot read the acceptance criteria {path} "
                                  f"(TRIAGE_ACCEPTANCE_FILE): {exc}") from exc
        if not isinstance(data, dict):
            raise ValidationError(f"{path}: expected a mapping of criteria")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"{path}: unknown criteria {', '.join(unknown)}; "
                                  f"use {', '.join(sorted(known))}")
        try:
            return cls(**{k: type(getattr(cls(), k))(v) for k, v in data.items()})
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _below(value: float, limit: float) -> bool:
    return math.isnan(value) or value < limit


def verdict(figures: Figures, criteria: AcceptanceCriteria) -> list[str]:
    """The criteria ``figures`` fail, in words (empty: the validation passes)."""
    failed = []
    if figures.positives < criteria.min_positives:
        failed.append(f"{figures.positives} positives, at least {criteria.min_positives} "
                      "needed")
    if figures.negatives < criteria.min_negatives:
        failed.append(f"{figures.negatives} negatives, at least {criteria.min_negatives} "
                      "needed")
    for name, estimate, limit in (
            ("sensitivity", figures.sensitivity, criteria.min_sensitivity_lower),
            ("specificity", figures.specificity, criteria.min_specificity_lower),
            ("AUC", figures.auc, criteria.min_auc_lower)):
        if limit > 0 and _below(estimate.low, limit):
            failed.append(f"lower 95 % bound of {name} {estimate.low:.3f} is below {limit}")
    rate = figures.not_assessable.value
    if not math.isnan(rate) and rate > criteria.max_not_assessable_rate:
        failed.append(f"not-assessable rate {rate:.3f} is above "
                      f"{criteria.max_not_assessable_rate}")
    return failed
