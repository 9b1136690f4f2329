"""TrainingSettings: environment first, then only the CLI flags that were given."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import SettingError, apply_overrides
from training.errors import TrainingError
from training.settings import TrainingSettings


def test_from_env_then_override() -> None:
    env = {"TRIAGE_TRAIN_EPOCHS": "5", "TRIAGE_TRAIN_DATA": "/data", "TRIAGE_TRAIN_MODE": "frozen"}
    settings = TrainingSettings.from_env(env)
    assert settings.epochs == 5 and settings.data == Path("/data") and settings.mode == "frozen"
    assert settings.folds == 10 and settings.weights == "imagenet"  # paper defaults
    changed = apply_overrides(settings, epochs=None, folds=3)
    assert changed.epochs == 5 and changed.folds == 3


def test_bad_values_are_rejected() -> None:
    with pytest.raises(SettingError, match="TRIAGE_TRAIN_EPOCHS"):
        TrainingSettings.from_env({"TRIAGE_TRAIN_EPOCHS": "many"})
    with pytest.raises(TrainingError, match="mode 'partial'"):
        TrainingSettings(mode="partial")
