"""The fold ensemble: load ``ensemble.json`` and the fold weights once, predict batches.

Preprocessing is imported from ``training.preprocessing`` (one code path for training and
serving); the manifest and fold files from ``training.manifest`` and ``training.model``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.errors import TriageError
from training.manifest import EnsembleManifest, load_manifest
from training.model import ARCHITECTURE, load_fold_model
from training.ood import Gate, features_and_logits, load_gate
from training.preprocessing import PreprocessConfig, load_unit_image, to_model_tensor
from worker.score.openvino import Runner, compile_ensemble
from worker.settings import BACKENDS, PRECISIONS, InferenceSettings

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# (folds, B) positive-class probabilities and, when the path yields them, each fold's
# (B, 2048) pooled features for the image gate (training.ood) from the same forward pass.
FoldRun = tuple[torch.Tensor, list[torch.Tensor] | None]
FoldRunner = Callable[[torch.Tensor], FoldRun]


def _torch_runner(models: Sequence[nn.Module], positive: int, device: str,
                  dtype: torch.dtype) -> FoldRunner:
    """(B, 3, H, W) -> probabilities and features of every fold, torch models, one pass."""

    def run(batch: torch.Tensor) -> FoldRun:
        x = batch.to(device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        probs, features = [], []
        for model in models:
            pooled, logits = features_and_logits(model, x)
            probs.append(torch.softmax(logits.float(), dim=1)[:, positive])
            features.append(pooled.float().cpu())
        return torch.stack(probs).cpu(), features

    return run


def _without_features(runner: Runner) -> FoldRunner:
    """A backend that yields probabilities only (OpenVINO's compiled graph)."""
    return lambda batch: (runner(batch), None)


class EnsembleError(TriageError):
    """The ensemble can't be loaded or run."""


def resolve_device(setting: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` must exist."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise EnsembleError("TRIAGE_DEVICE=cuda but no CUDA device is visible; use cpu or auto")
    return setting


@dataclass(frozen=True)
class BatchPrediction:
    """Per image: mean COVID-19 probability over folds, its spread, and each fold's value;
    with the image gate on, the gate score and whether the image is unlike the training data
    (both empty when the ensemble has no gate statistics)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    folds: tuple[tuple[float, ...], ...]
    gate_scores: tuple[float, ...] = ()
    not_assessable: tuple[bool, ...] = ()

    def unlike_training_data(self, index: int) -> bool:
        """Whether image ``index`` was refused by the gate (never, with the gate off)."""
        return bool(self.not_assessable) and self.not_assessable[index]


class Ensemble:
    """The loaded fold models of one manifest, on one device, in eval mode."""

    def __init__(self, manifest: EnsembleManifest, models: Sequence[nn.Module], device: str,
                 directory: Path, precision: str = "fp32", runner: FoldRunner | None = None,
                 exact_margin: float = 0.0, backend: str = "torch",
                 gate: Gate | None = None) -> None:
        self.manifest = manifest
        self.precision = precision
        self.backend = backend  # what runs: torch, or openvino (on the CPU only)
        self.runner = runner  # a faster approximate path (bf16 or OpenVINO), else None
        self.exact_margin = exact_margin
        self.models = list(models)
        self.device = device
        self.directory = directory
        self.config: PreprocessConfig = manifest.preprocess_config()
        self.gate = gate  # None: trained before the image gate; every image is assessed

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def threshold(self) -> float:
        return float(self.manifest.threshold)

    @classmethod
    def load(cls, model_dir: Path, inference: InferenceSettings) -> Ensemble:
        """Read the manifest, check every fold's SHA-256, load the folds as ``inference`` says.

        The one loader of live scoring and both re-scoring paths. Precision ``bf16`` casts the
        weights to bfloat16 (about 2x faster on CPUs with AVX-512 BF16, PERF-NOTES); ``fp32``
        is the exact reference. Backend ``openvino`` compiles all folds as one OpenVINO graph
        on the CPU (:mod:`worker.score.openvino`), cached in ``openvino_cache_dir``. With
        either, images whose mean lands within ``exact_margin`` of the threshold are scored
        again with the fp32 models, so decisions match fp32 whenever the fast path is off by
        less than the margin.
        """
        precision, backend = inference.precision, inference.backend
        if precision not in PRECISIONS:
            raise EnsembleError(f"inference precision {precision!r}: use fp32 or bf16")
        if backend not in BACKENDS:
            raise EnsembleError(f"inference backend {backend!r}: use torch or openvino")
        started = time.monotonic()
        if inference.torch_threads > 0:
            torch.set_num_threads(inference.torch_threads)
        manifest = load_manifest(Path(model_dir), verify_hashes=True)  # TrainingError on mismatch
        if manifest.architecture != ARCHITECTURE:
            raise EnsembleError(f"{model_dir}: architecture {manifest.architecture!r} is not "
                                f"{ARCHITECTURE!r}; this worker runs ResNet-50 ensembles")
        target = resolve_device(inference.device)
        models = []
        for path in manifest.fold_paths(Path(model_dir)):
            model = load_fold_model(path, num_classes=len(manifest.class_names), device=target)
            models.append(model.to(memory_format=torch.channels_last))
        runner: FoldRunner | None = None
        backend = "openvino" if backend == "openvino" and target == "cpu" else "torch"
        if backend == "openvino":
            runner = _without_features(compile_ensemble(
                models, positive=manifest.positive_index, size=manifest.input_size,
                precision=precision, model_version=manifest.model_version,
                cache_dir=inference.openvino_cache_dir, threads=inference.torch_threads))
        elif precision != "fp32":
            fast = [copy.deepcopy(m).to(dtype=DTYPES[precision]) for m in models]
            runner = _torch_runner(fast, manifest.positive_index, target, DTYPES[precision])
        logger.info("ensemble %s: %d folds loaded on %s (%s, %s) in %.1f s (threads %d)",
                    manifest.model_version, len(models), target, precision, backend,
                    time.monotonic() - started, torch.get_num_threads())
        return cls(manifest, models, target, Path(model_dir), precision, runner,
                   inference.exact_margin, backend, _load_gate(manifest, Path(model_dir)))

    def preprocess(self, path: Path) -> torch.Tensor:
        """One image file to its (3, size, size) model tensor (training's code path)."""
        unit = load_unit_image(path, size=self.config.size, resize=self.config.resize)
        return to_model_tensor(unit, **self.config.to_dict())

    def predict(self, batch: torch.Tensor) -> BatchPrediction:
        """Run every fold on a (B, 3, H, W) batch and summarise the positive-class softmax.

        The gate score comes from the same forward pass (the pooled features before the head);
        a backend that yields no features (OpenVINO) gets them from the fp32 models, for the
        gate only.
        """
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise EnsembleError(f"expected a non-empty (B, 3, H, W) batch, got {batch.shape}")
        reference = _torch_runner(self.models, self.manifest.positive_index, self.device,
                                  torch.float32)
        with torch.inference_mode():
            if self.runner is None:
                probs, features = reference(batch)
            else:
                probs, features = self.runner(batch)
                close = (probs.mean(dim=0) - self.threshold).abs() < self.exact_margin
                if bool(close.any()):  # near the threshold: let fp32 decide
                    probs[:, close] = reference(batch[close])[0]
                if features is None and self.gate is not None:
                    features = reference(batch)[1]
        mean = probs.mean(dim=0)
        std = probs.std(dim=0, unbiased=False)
        gate_scores: tuple[float, ...] = ()
        refused: tuple[bool, ...] = ()
        if self.gate is not None and features is not None:
            scores = self.gate.scores([f.double().numpy() for f in features])
            gate_scores = tuple(float(v) for v in scores)
            refused = tuple(self.gate.unlike(scores))
        return BatchPrediction(
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            folds=tuple(tuple(float(v) for v in probs[:, i]) for i in range(probs.shape[1])),
            gate_scores=gate_scores, not_assessable=refused,
        )


def _load_gate(manifest: EnsembleManifest, directory: Path) -> Gate | None:
    """The manifest's image gate; an ensemble without statistics loads with one warning."""
    gate = load_gate(directory, manifest.ood_gate, verify_hashes=False)  # load_manifest did
    if gate is None:
        logger.warning("ensemble %s has no image-gate statistics (trained before the gate): "
                       "the not-assessable check is OFF and every image gets a verdict; "
                       "re-run `cxr-triage train` on its run directory to add them",
                       manifest.model_version)
    return gate
