"""Transforms, optimiser groups and schedule of one fold."""

from __future__ import annotations

import itertools
import logging
import pickle

import pytest
import torch

from common.hardware import Capabilities
from training.engine import (
    EvalTransform,
    TrainTransform,
    build_optimizer,
    cosine_with_warmup,
    describe_precision,
    resolve_amp,
)
from training.model import build_resnet50
from training.preprocessing import PreprocessConfig, to_model_tensor


def test_train_transform_keeps_sides_and_eval_matches_to_model_tensor() -> None:
    config = PreprocessConfig(size=32)
    unit = torch.zeros(1, 32, 32)
    unit[:, :, :12] = 1.0  # bright left side, like a heart shadow on one side only
    torch.manual_seed(0)
    transform = TrainTransform(config)
    for _ in range(20):
        out = transform(unit)
        assert out.shape == (3, 32, 32)
        assert out[0, :, :12].mean() > out[0, :, 20:].mean(), "image was flipped"
    expected = to_model_tensor(unit[0].numpy(), **config.to_dict())
    torch.testing.assert_close(EvalTransform(config)(unit), expected)
    pickle.loads(pickle.dumps(transform))  # DataLoader workers may need to pickle it


def test_optimizer_groups_and_frozen_mode() -> None:
    model = build_resnet50()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, backbone_factor=0.1, mode="finetune")
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    frozen = build_optimizer(model, lr=1e-3, weight_decay=0.0, backbone_factor=0.1,
                             mode="frozen")
    assert len(frozen.param_groups) == 1
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad


def test_warmup_then_cosine_to_zero() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert lrs[-1] < 0.05


ZEN3 = Capabilities("AMD EPYC (Zen 3)", 2, frozenset({"avx2"}))
ZEN4 = Capabilities("AMD EPYC (Zen 4)", 2, frozenset({"avx2", "avx512f", "avx512_bf16",
                                                      "avx512_vnni"}))
AMPERE = Capabilities("x", 2, frozenset({"avx2"}), gpu="A100", gpu_capability=(8, 0),
                      gpu_bf16=True)
TURING = Capabilities("x", 2, frozenset({"avx2"}), gpu="T4", gpu_capability=(7, 5))


def test_auto_takes_bf16_only_where_the_hardware_has_it(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp("auto", cpu, ZEN3) is None  # emulated bf16: 11 min an epoch
    assert resolve_amp("auto", cpu, ZEN4) is torch.bfloat16
    assert resolve_amp("auto", cuda, AMPERE) is torch.bfloat16
    assert resolve_amp("auto", cuda, TURING) is None
    assert resolve_amp("fp32", cpu, ZEN4) is None
    assert "training precision fp32 (auto: no native bf16" in describe_precision(
        None, "auto", cpu, ZEN3)
    with caplog.at_level(logging.WARNING):
        assert resolve_amp("bf16", cpu, ZEN3) is torch.bfloat16  # asked for: honoured, loudly
    assert "NO native bf16" in caplog.text
