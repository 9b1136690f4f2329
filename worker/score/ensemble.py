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

import numpy as np
import torch
from torch import nn

from common.errors import TriageError
from common.hardware import Capabilities, detect
from training.manifest import EnsembleManifest, load_manifest
from training.model import ARCHITECTURE, load_fold_model
from training.ood import Gate, load_gate, stage_outputs
from training.preprocessing import PreprocessConfig, load_unit_image, to_model_tensor
from worker.score import speed
from worker.score.cam import fold_mean_cam, stage_cam
from worker.score.int8 import compile_int8
from worker.score.openvino import compile_ensemble
from worker.score.precision import Int8Graph, PrecisionChoice, PrecisionError, plan
from worker.settings import InferenceSettings

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# (folds, B) positive-class probabilities and, when the path yields them, each fold's
# (B, 3840) pooled features for the image gate (training.ood) and (B, h, w) Grad-CAM before
# ReLU for the result image (worker.score.cam), from the same forward pass.
FoldRun = tuple[torch.Tensor, list[torch.Tensor] | None, list[torch.Tensor] | None]
FoldRunner = Callable[[torch.Tensor], FoldRun]


def _torch_runner(models: Sequence[nn.Module], positive: int, device: str,
                  dtype: torch.dtype) -> FoldRunner:
    """(B, 3, H, W) -> probabilities and features of every fold, torch models, one pass."""

    def run(batch: torch.Tensor) -> FoldRun:
        x = batch.to(device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        probs, features, cams = [], [], []
        for model in models:
            pooled, logits, last = stage_outputs(model, x)
            probs.append(torch.softmax(logits.float(), dim=1)[:, positive])
            features.append(pooled.float().cpu())
            cams.append(stage_cam(last, model, positive).cpu())
        return torch.stack(probs).cpu(), features, cams

    return run


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
    cams: np.ndarray | None = None  # (B, h, w) fold-mean Grad-CAM (worker.score.cam)

    def cam(self, index: int) -> np.ndarray | None:
        """Image ``index``'s fold-mean Grad-CAM, when the path computed one."""
        return None if self.cams is None else self.cams[index]

    def unlike_training_data(self, index: int) -> bool:
        """Whether image ``index`` was refused by the gate (never, with the gate off)."""
        return bool(self.not_assessable) and self.not_assessable[index]


class Ensemble:
    """The loaded fold models of one manifest, on one device, in eval mode."""

    def __init__(self, manifest: EnsembleManifest, models: Sequence[nn.Module], device: str,
                 directory: Path, precision: str = "fp32", runner: FoldRunner | None = None,
                 exact_margin: float = 0.0, backend: str = "torch",
                 gate: Gate | None = None, choice: PrecisionChoice | None = None,
                 gate_margin: float = 0.0) -> None:
        self.manifest = manifest
        self.precision = precision  # what runs: fp32, bf16 or int8 (``auto`` resolved)
        self.backend = backend  # torch, or openvino (on the CPU only)
        self.choice = choice or PrecisionChoice(precision, backend, "given")
        self.runner = runner  # a faster approximate path (bf16, int8 or OpenVINO), else None
        self.exact_margin = exact_margin
        self.gate_margin = gate_margin  # share of the gate threshold (see predict)
        self.models = list(models)
        self.device = device
        self.directory = directory
        self.config: PreprocessConfig = manifest.preprocess_config()
        self.gate = gate  # None: trained before the image gate; every image is assessed
        self.rescored = 0  # images the fast path handed to fp32 (near the threshold) so far

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def threshold(self) -> float:
        return float(self.manifest.threshold)

    @classmethod
    def load(cls, model_dir: Path, inference: InferenceSettings,
             capabilities: Capabilities | None = None) -> Ensemble:
        """Read the manifest, check every fold's SHA-256, load the folds as ``inference`` says.

        The one loader of live scoring and both re-scoring paths. ``auto`` precision and backend
        are resolved for this hardware (``capabilities``, detected unless given) by
        :func:`worker.score.precision.choose_precision`: int8 (OpenVINO, with a current int8
        graph from ``cxr-triage model quantize``), bf16 (native only), or fp32 on OpenVINO or
        torch. Every path but torch fp32 is a fast approximation: images whose mean lands
        within ``exact_margin`` of the threshold are scored again with the fp32 torch models,
        so decisions match fp32 whenever the fast path is off by less than the margin.
        """
        started = time.monotonic()
        if inference.torch_threads > 0:
            torch.set_num_threads(inference.torch_threads)
        manifest = load_manifest(Path(model_dir), verify_hashes=True)  # TrainingError on mismatch
        if manifest.architecture != ARCHITECTURE:
            raise EnsembleError(f"{model_dir}: architecture {manifest.architecture!r} is not "
                                f"{ARCHITECTURE!r}; this worker runs ResNet-50 ensembles")
        target = resolve_device(inference.device)
        caps = capabilities or detect()
        try:
            choice, graph = plan(inference.precision, inference.backend, device=target,
                                 caps=caps,
                                 cache_dir=inference.openvino_cache_dir,
                                 model_version=manifest.model_version,
                                 input_size=manifest.input_size,
                                 fold_hashes=[f.sha256 for f in manifest.folds],
                                 gated=bool(manifest.ood_gate))
        except PrecisionError as exc:
            raise EnsembleError(str(exc)) from exc
        models = []
        for path in manifest.fold_paths(Path(model_dir)):
            model = load_fold_model(path, num_classes=len(manifest.class_names), device=target)
            models.append(model.to(memory_format=torch.channels_last))
        if speed.worth_timing(inference.precision, choice, caps, target):
            choice, runner = _faster_of(choice, models, manifest, target, inference, caps,
                                        graph)
        else:
            runner = _fast_runner(choice, models, manifest, target, inference, graph)
        exact_margin, gate_margin = _margins(choice, inference, graph)
        logger.info("ensemble %s: %d folds loaded on %s in %.1f s (threads %d); inference %s; "
                    "re-checked in fp32 within %.3f of the threshold and %.0f%% of the gate's",
                    manifest.model_version, len(models), target, time.monotonic() - started,
                    torch.get_num_threads(), choice.describe(), exact_margin, 100 * gate_margin)
        return cls(manifest, models, target, Path(model_dir), choice.precision, runner,
                   exact_margin, choice.backend,
                   _load_gate(manifest, Path(model_dir)), choice, gate_margin)

    def preprocess(self, path: Path) -> torch.Tensor:
        """One image file to its (3, size, size) model tensor (training's code path)."""
        unit = load_unit_image(path, size=self.config.size, resize=self.config.resize)
        return to_model_tensor(unit, **self.config.to_dict())

    def predict(self, batch: torch.Tensor) -> BatchPrediction:
        """Run every fold on a (B, 3, H, W) batch and summarise the positive-class softmax.

        The gate score comes from the same forward pass (the pooled features of each stage;
        OpenVINO graphs return them as their second output). On a fast path, images near the
        probability threshold (``exact_margin``) or near the gate threshold (``gate_margin``,
        a share of it) are scored again by the fp32 models, which decide them.
        """
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise EnsembleError(f"expected a non-empty (B, 3, H, W) batch, got {batch.shape}")
        reference = _torch_runner(self.models, self.manifest.positive_index, self.device,
                                  torch.float32)
        with torch.inference_mode():
            if self.runner is None:
                probs, features, cams = reference(batch)
                return self._summarise(probs, self._gate_scores(features), cams)
            probs, features, cams = self.runner(batch)
            scores = self._gate_scores(features)
            close = (probs.mean(dim=0) - self.threshold).abs() < self.exact_margin
            if scores is not None and self.gate is not None:
                margin = self.gate_margin * self.gate.threshold
                close |= torch.from_numpy(np.abs(scores - self.gate.threshold) < margin)
            if bool(close.any()):  # near a threshold: let fp32 decide
                self.rescored += int(close.sum())
                exact, exact_features, exact_cams = reference(batch[close])
                probs[:, close] = exact
                if cams is not None and exact_cams is not None:
                    for fold, values in zip(cams, exact_cams, strict=True):
                        fold[close] = values
                exact_scores = self._gate_scores(exact_features)
                if scores is not None and exact_scores is not None:
                    scores[close.numpy()] = exact_scores  # the score is per image
        return self._summarise(probs, scores, cams)

    def _gate_scores(self, features: list[torch.Tensor] | None) -> np.ndarray | None:
        """(B,) gate scores of each fold's features; ``None`` without a gate or features."""
        if self.gate is None or features is None:
            return None
        return self.gate.scores([f.double().numpy() for f in features])

    def _summarise(self, probs: torch.Tensor, scores: np.ndarray | None,
                   cams: list[torch.Tensor] | None) -> BatchPrediction:
        mean = probs.mean(dim=0)
        std = probs.std(dim=0, unbiased=False)
        gate_scores: tuple[float, ...] = ()
        refused: tuple[bool, ...] = ()
        if self.gate is not None and scores is not None:
            gate_scores = tuple(float(v) for v in scores)
            refused = tuple(self.gate.unlike(scores))
        return BatchPrediction(
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            folds=tuple(tuple(float(v) for v in probs[:, i]) for i in range(probs.shape[1])),
            gate_scores=gate_scores, not_assessable=refused,
            cams=None if cams is None else fold_mean_cam(cams),
        )


def _fast_runner(choice: PrecisionChoice, models: Sequence[nn.Module],
                 manifest: EnsembleManifest, device: str, inference: InferenceSettings,
                 graph: Int8Graph) -> FoldRunner | None:
    """The chosen fast path, or ``None`` for torch fp32 (the exact reference itself)."""
    if choice.backend == "openvino":
        if choice.precision == "int8":
            return compile_int8(graph, threads=inference.torch_threads)
        return compile_ensemble(
            models, positive=manifest.positive_index, size=manifest.input_size,
            precision=choice.precision, model_version=manifest.model_version,
            cache_dir=inference.openvino_cache_dir, threads=inference.torch_threads)
    if choice.precision == "fp32":
        return None
    dtype = DTYPES[choice.precision]
    fast = [copy.deepcopy(m).to(dtype=dtype) for m in models]
    return _torch_runner(fast, manifest.positive_index, device, dtype)


def _faster_of(choice: PrecisionChoice, models: Sequence[nn.Module],
               manifest: EnsembleManifest, device: str, inference: InferenceSettings,
               caps: Capabilities, graph: Int8Graph) -> tuple[PrecisionChoice, FoldRunner | None]:
    """The fastest of ``choice``'s candidates here (:mod:`worker.score.speed`: bf16 or fp32;
    int8 against bf16 and fp32 with their re-checks), timed once per machine and model, then
    cached, with its runner."""
    cache, version, size = inference.openvino_cache_dir, manifest.model_version, \
        manifest.input_size
    timed = speed.cached_choice(choice, caps, cache, version, size, inference.torch_threads,
                                graph)
    if timed is not None:
        return timed, _fast_runner(timed, models, manifest, device, inference, graph)
    exact = _torch_runner(models, manifest.positive_index, device, torch.float32)
    runners: dict[str, FoldRunner | None] = {
        name: None if name == speed.REFERENCE else _fast_runner(
            PrecisionChoice(name, choice.backend, ""), models, manifest, device, inference,
            graph)
        for name in speed.candidates(choice, caps)}
    rates = speed.measure({name: run or exact for name, run in runners.items()}, size)
    speed.store_rates(speed.cache_file(cache, version, size),
                      speed.cache_key(caps, choice.backend, inference.torch_threads), rates)
    decided = speed.decided(choice, rates, speed.shares(graph))
    return decided, runners[decided.precision]


def _margins(choice: PrecisionChoice, inference: InferenceSettings,
             graph: Int8Graph) -> tuple[float, float]:
    """The re-check margins: the settings, widened for int8 to those measured when its graph
    was built (twice its largest error; :mod:`worker.score.int8`)."""
    if choice.precision != "int8" or graph.error is None:
        return inference.exact_margin, inference.gate_margin
    return (max(inference.exact_margin, graph.error.exact_margin),
            max(inference.gate_margin, graph.error.gate_margin))


def _load_gate(manifest: EnsembleManifest, directory: Path) -> Gate | None:
    """The manifest's image gate; an ensemble without statistics loads with one warning."""
    gate = load_gate(directory, manifest.ood_gate, verify_hashes=False)  # load_manifest did
    if gate is None:
        logger.warning("ensemble %s has no image-gate statistics (trained before the gate): "
                       "the not-assessable check is OFF and every image gets a verdict; "
                       "re-run `cxr-triage train` on its run directory to add them",
                       manifest.model_version)
    return gate
