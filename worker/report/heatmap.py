"""Where the ensemble looked: Grad-CAM of the COVID-19 class, averaged over the fold models.

Grad-CAM (Selvaraju et al., 2017) comes from the maintained ``grad-cam`` package
(``pytorch_grad_cam.GradCAM``), on the last convolutional stage (``layer4``) of each fold's
ResNet-50, for the positive class's logit. Each fold's map is scaled to [0, 1] by the library;
the study's heatmap is their mean. It is computed once per study, for the image that decided it.

Cost: a Grad-CAM is one forward pass per fold plus a backward pass. The backward pass only
needs the gradient at ``layer4``'s output, so the parameters are frozen while it runs and the
stage's output is made the leaf of the graph: autograd records nothing below ``layer4`` and no
weight gradient is allocated. The forward passes run in bf16 (autocast) when the ensemble scores
in bf16 (hardware with native bf16), else in fp32: a map of a few cells per side changes by
well under 1 % of its range (bench/result_image.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib import colormaps
from torch import nn

from training.manifest import EnsembleManifest
from worker.errors import WorkerError

# The heatmap is drawn where the mean map reaches this share of its maximum, fading in from
# there; below it the radiograph shows through untouched, so the colour marks the strongest
# evidence, not the whole image.
DRAW_FROM = 0.4
MAX_ALPHA = 0.6  # opacity of the heatmap at its maximum


class HeatmapError(WorkerError):
    """The heatmap could not be computed (no ``layer4`` stage, a bad input...)."""


class HeatmapEnsemble(Protocol):
    """What the heatmap needs of ``worker.score.ensemble.Ensemble``: the fp32 fold models,
    their device and the manifest (the positive class)."""

    models: list[nn.Module]
    device: str
    manifest: EnsembleManifest
    precision: str  # what scoring runs in: fp32, bf16 (native) or int8


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No weight gradients while the CAM runs; the flags are put back afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _leaf_at_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the stage's output becomes an fp32 graph leaf that requires a gradient."""
    return output.detach().float().requires_grad_(True)


def fold_cam(model: nn.Module, tensor: torch.Tensor, positive: int) -> np.ndarray:
    """Grad-CAM of class ``positive`` on one fold for a (1, 3, H, W) input: (H, W) in [0, 1]."""
    from pytorch_grad_cam import GradCAM  # imported when used: it loads OpenCV and pyplot
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    stage = getattr(model, "layer4", None)
    if not isinstance(stage, nn.Sequential) or len(stage) == 0:
        raise HeatmapError("the fold model has no layer4 stage; Grad-CAM needs a ResNet")
    # Registered before GradCAM's own hooks on the stage, so theirs see the leaf.
    handle = stage[-1].register_forward_hook(_leaf_at_output)
    cam = GradCAM(model=model, target_layers=[stage])
    try:
        with _frozen(model), torch.enable_grad():
            maps = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(positive)])
    finally:
        cam.activations_and_grads.release()  # not ``with``: its __exit__ swallows IndexError
        handle.remove()
    return np.asarray(maps[0], dtype=np.float32)


def ensemble_cam(models: Sequence[nn.Module], tensor: torch.Tensor, positive: int,
                 device: str = "cpu", *, bf16: bool = False) -> np.ndarray:
    """The mean of every fold's Grad-CAM for one (3, H, W) model input: (H, W) in [0, 1].

    ``bf16``: the forward passes under bf16 autocast (the maps are computed in fp32).
    """
    if tensor.ndim != 3:
        raise HeatmapError(f"expected one (3, H, W) model input, got {tuple(tensor.shape)}")
    if not models:
        raise HeatmapError("no fold models")
    batch = tensor.unsqueeze(0).to(device, dtype=torch.float32)
    batch = batch.contiguous(memory_format=torch.channels_last)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
        maps = [fold_cam(model, batch, positive) for model in models]
    return np.mean(np.stack(maps), axis=0).astype(np.float32)


def study_heatmap(ensemble: HeatmapEnsemble, tensor: torch.Tensor) -> np.ndarray:
    """:func:`ensemble_cam` with the ensemble's fp32 models (the bf16, int8 or OpenVINO fast
    paths serve scoring only), autocast to bf16 when scoring runs in bf16."""
    return ensemble_cam(ensemble.models, tensor, ensemble.manifest.positive_index,
                        ensemble.device, bf16=ensemble.precision == "bf16")


def _resized(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map stretched to (height, width): the model saw the image squashed to a square."""
    if cam.shape == (height, width):
        return cam
    grid = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear",
                                          align_corners=False)
    return out[0, 0].clamp(0.0, 1.0).numpy()


def overlay(grey: np.ndarray, cam: np.ndarray | None) -> np.ndarray:
    """The radiograph (H, W floats in [0, 1], bright = dense) as RGB uint8, with ``cam`` in
    the jet colour map where it reaches :data:`DRAW_FROM` of its maximum, its opacity rising
    to :data:`MAX_ALPHA` at the maximum (``None``: grey)."""
    base = np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    if cam is not None and float(cam.max()) > 0.0:
        level = _resized(cam / float(cam.max()), *grey.shape)
        colour = colormaps["jet"](level)[..., :3].astype(np.float32)
        alpha = MAX_ALPHA * np.clip((level - DRAW_FROM) / (1.0 - DRAW_FROM), 0.0, 1.0)
        alpha = alpha[..., None]
        base = base * (1.0 - alpha) + colour * alpha
    return np.rint(base * 255.0).astype(np.uint8)
