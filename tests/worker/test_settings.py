"""Worker settings: one object, every default written once, CLI flags through one function."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.config import apply_overrides
from common.queues import BrokerSettings
from cxr_triage.cli import build_parser
from tests.support.settings_catalog import settings_read_by_code
from tests.worker.conftest import scoring_options
from worker import cli as worker_cli
from worker.rescore import cli as rescore_cli
from worker.settings import InferenceSettings, RescoreSettings, WorkerSettings


def test_from_env_without_variables_is_the_field_defaults() -> None:
    # one exception: unset TRIAGE_INFERENCE_PRECISION/_BACKEND mean auto (the fastest path
    # with fp32 decisions here); the fields default to the exact reference, torch fp32
    from_env = WorkerSettings.from_env({})
    assert (from_env.inference.precision, from_env.inference.backend) == ("auto", "auto")
    assert from_env == dataclasses.replace(WorkerSettings(), inference=dataclasses.replace(
        InferenceSettings(), precision="auto", backend="auto"))
    assert BrokerSettings.from_env({}) == BrokerSettings()
    defaults = WorkerSettings()
    assert (defaults.inference.precision, defaults.inference.backend) == ("fp32", "torch")
    assert defaults.rescore.batch == 8
    options = scoring_options("h")  # live scoring's options come from WorkerSettings only
    assert (options.batch_size, options.lease_s, options.indeterminate_std) == (
        defaults.score_batch, defaults.score_lease_s, defaults.indeterminate_std)


def test_nested_settings_read_their_variables() -> None:
    settings = WorkerSettings.from_env({
        "TRIAGE_INFERENCE_PRECISION": "BF16", "TRIAGE_INFERENCE_BACKEND": "openvino",
        "TRIAGE_OPENVINO_CACHE_DIR": "/ov", "TRIAGE_EXACT_MARGIN": "0.05",
        "TRIAGE_TORCH_THREADS": "3", "TRIAGE_RESCORE_BATCH": "5",
        "TRIAGE_RESCORE_WORKERS": "0", "TRIAGE_DRIFT_PSI_THRESHOLD": "0.3",
    })
    assert settings.inference == InferenceSettings(
        device="auto", torch_threads=3, precision="bf16", backend="openvino",
        openvino_cache_dir=Path("/ov"), exact_margin=0.05)
    assert (settings.rescore.batch, settings.rescore.loader_workers) == (5, 0)
    assert settings.rescore.drift_psi == 0.3
    with pytest.raises(ValueError, match="TRIAGE_INFERENCE_BACKEND"):
        WorkerSettings.from_env({"TRIAGE_INFERENCE_BACKEND": "tpu"})
    with pytest.raises(ValueError, match="TRIAGE_RESCORE_BATCH"):
        WorkerSettings.from_env({"TRIAGE_RESCORE_BATCH": "0"})


def test_apply_overrides_replaces_only_given_flags() -> None:
    settings = WorkerSettings(score_batch=4, rescore=RescoreSettings(batch=2, loader_workers=1))
    assert apply_overrides(settings, score_batch=None) is settings
    changed = apply_overrides(settings, calling_ae="AE", **{
        "rescore.batch": 6, "rescore.loader_workers": None, "inference.device": "cpu"})
    assert (changed.calling_ae, changed.score_batch) == ("AE", 4)
    assert (changed.rescore.batch, changed.rescore.loader_workers) == (6, 1)
    assert changed.inference.device == "cpu"


def test_command_line_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_RESCORE_BATCH", "3")
    monkeypatch.setenv("TRIAGE_RESCORE_WORKERS", "1")
    monkeypatch.setenv("TRIAGE_DEVICE", "cuda")
    parser = build_parser()
    rescore = rescore_cli._settings(parser.parse_args(["rescore", "--batch-size", "7"]))
    assert (rescore.rescore.batch, rescore.rescore.loader_workers) == (7, 1)
    worker = worker_cli._settings(parser.parse_args(["worker", "--device", "cpu"]))
    assert worker.inference.device == "cpu" and worker.rescore.batch == 3


def test_no_test_hook_is_a_production_setting() -> None:
    assert not {name for name in settings_read_by_code() if name.startswith("TRIAGE_TEST_")}
    assert not any("hold" in name or "kill" in name
                   for name in WorkerSettings.__dataclass_fields__)
