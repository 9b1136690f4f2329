"""ResNet-50 with a 2-class head; weights from ImageNet, a file, or random; fold files I/O.

The worker imports :func:`load_fold_model` (and :func:`build_resnet50`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, resnet50

from training.errors import TrainingError

log = logging.getLogger(__name__)

ARCHITECTURE = "resnet50"


def imagenet_weights_path() -> Path:
    """Where torchvision looks for IMAGENET1K_V1 in the torch hub cache."""
    name = Path(urlparse(ResNet50_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainingError(f"weights file {path} does not exist; pass an existing --weights PATH")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, ValueError) as exc:
        raise TrainingError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision reference checkpoints
    if not isinstance(state, dict):
        raise TrainingError(f"{path} is not a state dict of tensors")
    return state


def _load_backbone(model: ResNet, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load all matching tensors; the fc head is kept only when its shape matches."""
    own = model.state_dict()
    if state.get("fc.weight") is not None and state["fc.weight"].shape != own["fc.weight"].shape:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise TrainingError(
            f"{source} is not a ResNet-50 state dict (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); pass ResNet-50 weights"
        )


def build_resnet50(num_classes: int = 2, weights: str | Path | None = None) -> ResNet:
    """ResNet-50 with an ``num_classes`` head.

    Parameters
    ----------
    weights
        ``"imagenet"`` (IMAGENET1K_V1 from the torch hub cache; never downloaded),
        ``None``/``"none"`` (random init), or a state-dict path (.pth/.pt/.safetensors).
    """
    model = resnet50(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if weights is None or str(weights).lower() == "none":
        return model
    if str(weights).lower() == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise TrainingError(
                f"ImageNet weights not found at {path} and this machine cannot download them. "
                f"Copy {ResNet50_Weights.IMAGENET1K_V1.url} into {path.parent}/, "
                "or pass --weights PATH to a ResNet-50 state dict, or --weights none"
            )
    else:
        path = Path(weights)
    _load_backbone(model, _read_state_dict(path), path)
    log.info("loaded backbone weights from %s", path)
    return model


def save_fold_model(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write the state dict as safetensors (no pickle: the worker loads it safely)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"architecture": ARCHITECTURE, **metadata})
    tmp.replace(path)  # a fold file is either complete or absent, which resume relies on


def load_fold_model(path: Path, num_classes: int = 2, device: str = "cpu") -> ResNet:
    """Load one fold's safetensors into an eval-mode ResNet-50 on ``device``."""
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"cannot read fold model {path}: {exc}") from exc
    # Built on the meta device: random init of 25M parameters would cost seconds per fold.
    with torch.device("meta"):
        model = build_resnet50(num_classes=num_classes, weights=None)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise TrainingError(
            f"{path} does not match a {num_classes}-class ResNet-50: {exc}"
        ) from exc
    return model.to(device).eval()
