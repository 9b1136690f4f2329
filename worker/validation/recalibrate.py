"""``validate --recalibrate``: the threshold that reaches the target sensitivity on local data,
and (``--accept``) a new model version with it: same weights, new threshold, new model version
and Device UID, registered in the store and, like any version, not live until validated."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db.models import utcnow
from training.manifest import EnsembleManifest, model_version, write_manifest
from training.metrics import confusion, threshold_for_sensitivity
from worker.models.store import Imported, add_to_store
from worker.report.identity import RECALIBRATION_KEY
from worker.validation.criteria import ValidationError
from worker.validation.stats import Estimate, Sample, wilson


@dataclass(frozen=True)
class Proposal:
    """A threshold chosen on local data, and what it gives there (Wilson intervals)."""

    threshold: float
    target_sensitivity: float
    sensitivity: Estimate
    specificity: Estimate

    def lines(self, current: float) -> list[str]:
        return [f"proposed threshold {self.threshold:.4f} (now {current:.4f}) reaches the "
                f"target sensitivity {self.target_sensitivity:.2f} on local data",
                f"at it: sensitivity {self.sensitivity.text()}, specificity "
                f"{self.specificity.text()}",
                "chosen and measured on the same studies, so optimistic: validate the new "
                "version on labels it was not chosen on before promoting it"]


def propose(samples: Sequence[Sample], target: float) -> Proposal:
    """The highest threshold whose local sensitivity reaches ``target``."""
    assessed = [s for s in samples if s.decision != "not_assessable"]
    y = np.array([int(s.positive) for s in assessed])
    p = np.array([s.probability for s in assessed])
    if not y.any():
        raise ValidationError("no positive study among the labelled ones: a threshold for a "
                              "sensitivity can't be chosen")
    threshold, _, _ = threshold_for_sensitivity(y, p, target)
    c = confusion(y, p >= threshold)
    return Proposal(threshold, target, wilson(c.tp, c.tp + c.fn), wilson(c.tn, c.tn + c.fp))


def recalibrated_manifest(manifest: EnsembleManifest, proposal: Proposal,
                          validation_id: int) -> EnsembleManifest:
    """The manifest of the same weights at the proposed threshold, under a new version."""
    threshold = round(proposal.threshold, 6)
    version = model_version([*(f.sha256 for f in manifest.folds), f"threshold={threshold!r}"])
    training = {**manifest.training, RECALIBRATION_KEY: {
        "from_version": manifest.model_version, "previous_threshold": manifest.threshold,
        "target_sensitivity": proposal.target_sensitivity, "validation_id": validation_id,
        "local_sensitivity": proposal.sensitivity.value,
        "local_specificity": proposal.specificity.value,
        "at": utcnow().isoformat(timespec="seconds")}}
    return dataclasses.replace(manifest, threshold=threshold, model_version=version,
                               training=training)


def accept(sessions: sessionmaker[Session], model_dir: Path, manifest: EnsembleManifest,
           proposal: Proposal, *, validation_id: int, store: Path, by: str) -> Imported:
    """Write the recalibrated ensemble (fold files copied) and register it in the store."""
    new = recalibrated_manifest(manifest, proposal, validation_id)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recalibrate-", dir=store) as tmp:
        staging = Path(tmp) / "model"
        shutil.copytree(model_dir, staging)
        write_manifest(staging, new)
        return add_to_store(sessions, staging, store, by, derived_from=manifest.model_version)
