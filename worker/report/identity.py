"""The model identity a report names: algorithm, version, ensemble hash and Device UID."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from training.manifest import EnsembleManifest
from worker.report.content import SRError

DEFAULT_ALGORITHM_NAME = "cxr-triage COVID-19 ensemble"
RECALIBRATION_KEY = "recalibration"  # in the manifest's ``training`` block (``validate``)
_DEVICE_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-triage:device")


@dataclass(frozen=True)
class ModelIdentity:
    """The ensemble that produced the finding.

    ``device_uid`` is derived from ``ensemble_hash``, so it changes whenever the
    model is retrained (PS3.5 B.2, a UUID-derived UID under ``2.25``), and from the
    ``operating_point`` of a threshold recalibrated on local data.
    """

    algorithm_name: str
    version: str
    ensemble_hash: str
    not_for_clinical_use: bool = False
    operating_point: str = ""  # set when the threshold was recalibrated on local data

    def __post_init__(self) -> None:
        for field_name in ("algorithm_name", "version"):  # LO values (PS3.5 6.2)
            value = getattr(self, field_name)
            if not value or len(value) > 64 or "\\" in value:
                raise SRError(f"ModelIdentity.{field_name} must be 1-64 characters without '\\'")
        if not self.ensemble_hash:
            raise SRError("ModelIdentity.ensemble_hash must not be empty")

    @property
    def device_uid(self) -> str:
        """Deterministic Device UID for this algorithm and ensemble."""
        key = f"{self.algorithm_name}/{self.ensemble_hash}"
        if self.operating_point:  # same weights, another threshold: another device
            key += f"/{self.operating_point}"
        return f"2.25.{uuid.uuid5(_DEVICE_UID_NAMESPACE, key).int}"


def ensemble_hash(manifest: EnsembleManifest) -> str:
    """SHA-256 over the fold hashes in fold order: changes whenever any weight changes."""
    return hashlib.sha256("".join(f.sha256 for f in manifest.folds).encode()).hexdigest()


def _lo(text: str) -> str:
    """A value usable as an LO (PS3.5 6.2): no backslash or control characters, 64 at most."""
    cleaned = "".join(ch for ch in text if ch.isprintable() and ch != "\\").strip()
    return cleaned[:64]


def model_identity(manifest: EnsembleManifest) -> ModelIdentity:
    """How the SR names the ensemble: label (or a default), model_version, ensemble hash."""
    return ModelIdentity(
        algorithm_name=_lo(manifest.label) or DEFAULT_ALGORITHM_NAME,
        version=_lo(manifest.model_version) or "unknown",
        ensemble_hash=ensemble_hash(manifest),
        not_for_clinical_use=manifest.not_for_clinical_use,
        operating_point=(f"threshold={manifest.threshold!r}"
                         if manifest.training.get(RECALIBRATION_KEY) else ""),
    )
