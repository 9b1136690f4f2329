"""Training settings from ``TRIAGE_TRAIN_*`` environment variables; CLI flags override."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import (
    default_var_dir,
    env_float,
    env_int,
    env_opt_path,
    env_path,
    env_str,
)
from training.errors import TrainingError

MODES = ("finetune", "frozen")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainingSettings:
    """Everything a cross-validation run needs; defaults follow the paper (10 folds, 30 epochs).

    Environment variables (all optional): ``TRIAGE_TRAIN_DATA``, ``TRIAGE_TRAIN_OUT``,
    ``TRIAGE_TRAIN_FOLDS``, ``TRIAGE_TRAIN_EPOCHS``, ``TRIAGE_TRAIN_INPUT_SIZE``,
    ``TRIAGE_TRAIN_BATCH_SIZE``, ``TRIAGE_TRAIN_LR``, ``TRIAGE_TRAIN_WEIGHT_DECAY``,
    ``TRIAGE_TRAIN_BACKBONE_LR_FACTOR``, ``TRIAGE_TRAIN_MODE``, ``TRIAGE_TRAIN_WEIGHTS``,
    ``TRIAGE_TRAIN_DEVICE``, ``TRIAGE_TRAIN_PRECISION``, ``TRIAGE_TRAIN_WORKERS``,
    ``TRIAGE_TRAIN_THREADS``, ``TRIAGE_TRAIN_SEED``, ``TRIAGE_TRAIN_TARGET_SENSITIVITY``.
    """

    data: Path | None = None
    out: Path = Path("var/runs/latest")
    folds: int = 10
    epochs: int = 30
    input_size: int = 224
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    backbone_lr_factor: float = 0.1
    mode: str = "finetune"
    weights: str = "imagenet"
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    threads: int = 0
    seed: int = 42
    target_sensitivity: float = 0.95
    limit: int | None = None
    label: str = ""
    not_for_clinical_use: bool = True

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("device", self.device, DEVICES),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in allowed:
                raise TrainingError(f"{name} {value!r} is not one of {allowed}")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainingError("epochs must be >= 1 and batch size >= 2")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise TrainingError("target sensitivity must be in (0, 1]")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainingSettings:
        """Read ``TRIAGE_TRAIN_*`` (``env`` defaults to ``os.environ``)."""
        d = cls()
        return cls(
            data=env_opt_path(env, "TRAIN_DATA"),
            out=env_path(env, "TRAIN_OUT", default_var_dir() / "runs" / "latest"),
            folds=env_int(env, "TRAIN_FOLDS", d.folds),
            epochs=env_int(env, "TRAIN_EPOCHS", d.epochs),
            input_size=env_int(env, "TRAIN_INPUT_SIZE", d.input_size),
            batch_size=env_int(env, "TRAIN_BATCH_SIZE", d.batch_size),
            lr=env_float(env, "TRAIN_LR", d.lr),
            weight_decay=env_float(env, "TRAIN_WEIGHT_DECAY", d.weight_decay),
            backbone_lr_factor=env_float(env, "TRAIN_BACKBONE_LR_FACTOR", d.backbone_lr_factor),
            mode=env_str(env, "TRAIN_MODE", d.mode),
            weights=env_str(env, "TRAIN_WEIGHTS", d.weights),
            device=env_str(env, "TRAIN_DEVICE", d.device),
            precision=env_str(env, "TRAIN_PRECISION", d.precision),
            num_workers=env_int(env, "TRAIN_WORKERS", d.num_workers),
            threads=env_int(env, "TRAIN_THREADS", d.threads),
            seed=env_int(env, "TRAIN_SEED", d.seed),
            target_sensitivity=env_float(env, "TRAIN_TARGET_SENSITIVITY", d.target_sensitivity),
        )

    def run_config(self) -> dict[str, Any]:
        """The values that must match for a resumed run to reuse earlier folds."""
        return {
            "folds": self.folds, "epochs": self.epochs, "input_size": self.input_size,
            "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
            "backbone_lr_factor": self.backbone_lr_factor, "mode": self.mode,
            "weights": self.weights, "precision": self.precision, "seed": self.seed,
            "limit": self.limit,
        }
