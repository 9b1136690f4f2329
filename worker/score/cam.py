"""Grad-CAM from the scoring pass: the result image's heatmap without running the models again.

For a ResNet, the positive-class logit is ``fc(avgpool(A))`` of the last stage's output ``A``
(K, h, w), so its gradient at every cell of ``A`` is ``W[positive] / (h * w)``: Grad-CAM's
channel weights (the spatial mean of that gradient) are known without a backward pass, and
the map is ``sum_k W[positive, k] A_k / (h * w)``. The scoring forward pass computes it for
every image; ReLU and the per-fold scaling to [0, 1] are ``pytorch_grad_cam``'s own
(``scale_cam_image``), and ``tests/delivery/test_result_image.py`` checks the result against
the library's ``GradCAM`` run on the model. The fold maps are averaged, as in
``worker.report.heatmap.ensemble_cam``, and stored with the score (``score.cam``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def stage_cam(stage_output: torch.Tensor, model: nn.Module, positive: int) -> torch.Tensor:
    """Grad-CAM of class ``positive`` before ReLU: (B, h, w) from a (B, K, h, w) stage output
    and the (C, K) weight of the ResNet's linear head (``fc``) that reads its global average."""
    head = model.fc
    fc_weight = head.weight if isinstance(head, nn.Linear) else None
    if fc_weight is None:
        raise TypeError("the model's head (fc) is not a linear layer")
    _, _, height, width = stage_output.shape
    weights = fc_weight[positive].to(stage_output.dtype) / float(height * width)
    return torch.einsum("bkhw,k->bhw", stage_output, weights).float()


def fold_mean_cam(fold_cams: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
    """(B, h, w): each fold's (B, h, w) map after ReLU, scaled to [0, 1] by the library, then
    averaged over the folds."""
    from pytorch_grad_cam.utils.image import scale_cam_image  # loads OpenCV: only when used

    stacked = [np.maximum(np.asarray(cam.detach().cpu().float().numpy()), 0.0)
               for cam in fold_cams]
    scaled = [scale_cam_image(cam) for cam in stacked]
    return np.mean(np.stack(scaled), axis=0).astype(np.float32)


def as_rows(cam: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """One image's (h, w) map as the nested tuples ``score.cam`` stores (4 decimals)."""
    return tuple(tuple(round(float(v), 4) for v in row) for row in np.asarray(cam))
