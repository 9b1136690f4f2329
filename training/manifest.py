"""``ensemble.json``: what the worker needs to load and trust an ensemble.

The worker calls :func:`load_manifest` (validates the format and that every fold file exists
with the recorded SHA-256) and then :func:`training.model.load_fold_model` per fold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.durable import replace_json
from training.data import file_sha256
from training.errors import TrainingError
from training.preprocessing import PreprocessConfig

MANIFEST_FILE = "ensemble.json"
FORMAT = "cxr-triage-ensemble"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FoldEntry:
    """One fold model: its file (relative to the manifest), hash and held-out metrics."""

    index: int
    file: str
    sha256: str
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleManifest:
    """The contents of ``ensemble.json`` (format_version 1)."""

    architecture: str
    input_size: int
    preprocessing: dict[str, Any]
    class_names: list[str]
    positive_class: str
    threshold: float
    threshold_target_sensitivity: float
    threshold_oof_specificity: float
    folds: list[FoldEntry]
    dataset_fingerprint: str
    seed: int
    package_version: str
    model_version: str
    created_at: str
    not_for_clinical_use: bool = True
    label: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    # The image gate (training.ood); None in ensembles trained before it existed: gate off.
    ood_gate: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def positive_index(self) -> int:
        """Column of the positive class in the model output."""
        return self.class_names.index(self.positive_class)

    def preprocess_config(self) -> PreprocessConfig:
        """The :class:`PreprocessConfig` to feed ``to_model_tensor``."""
        return PreprocessConfig.from_dict(self.preprocessing)

    def fold_paths(self, directory: Path) -> list[Path]:
        """Absolute paths of the fold files."""
        return [directory / fold.file for fold in self.folds]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, ``format`` keys first."""
        data = asdict(self)
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}


def model_version(hashes: list[str]) -> str:
    """Short id that changes whenever any fold's weights change (for the SR's device UID)."""
    return hashlib.sha256("".join(hashes).encode()).hexdigest()[:12]


def write_manifest(directory: Path, manifest: EnsembleManifest) -> Path:
    """Write ``ensemble.json`` atomically and return its path."""
    path = directory / MANIFEST_FILE
    replace_json(path, manifest.to_dict())
    return path


def _parse(data: dict[str, Any], path: Path) -> EnsembleManifest:
    if data.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a cxr-triage ensemble (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise TrainingError(
            f"{path} has format_version {data.get('format_version')!r}; this cxr-triage reads "
            f"{FORMAT_VERSION}: retrain or upgrade cxr-triage"
        )
    try:
        folds = [FoldEntry(**fold) for fold in data.pop("folds")]
        manifest = EnsembleManifest(folds=folds, **data)
    except TypeError as exc:
        raise TrainingError(f"{path} has missing or unknown keys: {exc}") from exc
    if manifest.positive_class not in manifest.class_names or not manifest.folds:
        raise TrainingError(f"{path}: positive_class not in class_names, or no folds")
    return manifest


def load_manifest(directory: Path, *, verify_hashes: bool = True) -> EnsembleManifest:
    """Read and validate ``directory/ensemble.json``; every fold file must exist (and match)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrainingError(f"no {MANIFEST_FILE} in {directory}; train with `cxr-triage train`") \
            from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from exc
    manifest = _parse(dict(data), path)
    for fold, fold_path in zip(manifest.folds, manifest.fold_paths(Path(directory)), strict=True):
        if not fold_path.is_file():
            raise TrainingError(f"fold file {fold_path} named in {path} is missing")
        if verify_hashes and file_sha256(fold_path) != fold.sha256:
            raise TrainingError(f"fold file {fold_path} does not match its sha256 in {path}")
    _check_gate(manifest, Path(directory), path, verify_hashes)
    return manifest


def _check_gate(manifest: EnsembleManifest, directory: Path, path: Path,
                verify_hashes: bool) -> None:
    """The ``ood_gate`` block names one statistics file per fold, present and matching."""
    gate = manifest.ood_gate
    if gate is None:
        return
    entries = gate.get("folds") if isinstance(gate, dict) else None
    if not isinstance(entries, list) or len(entries) != len(manifest.folds) \
            or not isinstance(gate.get("threshold"), (int, float)):
        raise TrainingError(f"{path}: ood_gate needs a threshold and one entry per fold")
    for entry in entries:
        stats = directory / str(entry.get("file"))
        if not stats.is_file():
            raise TrainingError(f"gate statistics {stats} named in {path} are missing")
        if verify_hashes and file_sha256(stats) != entry.get("sha256"):
            raise TrainingError(f"gate statistics {stats} do not match their sha256 in {path}")
