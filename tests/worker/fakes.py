"""Test doubles with exact outputs: a predictor keyed by file and a recording sender."""

from __future__ import annotations

from pathlib import Path

import torch

from worker.deliver.cstore import DeliveryOutcome, OutcomeKind
from worker.deliver.delivery import Outgoing
from worker.score.ensemble import BatchPrediction


class FixedPredictor:
    """Gives each file the probability set for it (both folds agree)."""

    device = "cpu"

    def __init__(self, threshold: float = 0.5, version: str = "fixed-v1") -> None:
        self.probabilities: dict[str, float] = {}
        self._threshold = threshold
        self._version = version

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def threshold(self) -> float:
        return self._threshold

    def preprocess(self, path: Path) -> torch.Tensor:
        if str(path) not in self.probabilities:
            raise ValueError(f"no probability set for {path}")
        return torch.full((3, 4, 4), self.probabilities[str(path)])

    def predict(self, batch: torch.Tensor) -> BatchPrediction:
        values = tuple(float(v) for v in batch[:, 0, 0, 0])
        return BatchPrediction(values, tuple(0.0 for _ in values), tuple((v, v) for v in values))


class RecordingSender:
    """Answers with queued outcomes (default: sent) and records what was sent where."""

    def __init__(self, *outcomes: OutcomeKind) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Path, str]] = []

    def __call__(self, outgoing: Outgoing) -> DeliveryOutcome:
        destination = outgoing.destination
        self.calls.append((outgoing.path, destination.label))
        if destination.shadow:
            return DeliveryOutcome(OutcomeKind.SHADOW, "shadow", destination=destination.label)
        kind = self.outcomes.pop(0) if self.outcomes else OutcomeKind.SENT
        return DeliveryOutcome(kind, f"test outcome {kind.value}", destination=destination.label)
