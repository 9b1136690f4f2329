"""``auto`` on native bf16 without AMX: bf16 and fp32 are timed once and the faster is kept.

The capability report is injected (a Zen 4-like CPU without AMX, and one with AMX), and the
cached rates are written by hand where a test needs one path to be the faster: the logic is
tested, never a timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.hardware import Capabilities
from training.manifest import load_manifest
from worker.score import speed
from worker.score.ensemble import Ensemble
from worker.score.precision import PrecisionChoice
from worker.settings import InferenceSettings

NO_AMX = Capabilities("AVX512-BF16 CPU without AMX", 2, frozenset(
    {"avx2", "avx512f", "avx512_bf16"}), "AVX512")  # no VNNI: int8 stays out of the way
AMX = Capabilities("AMX CPU", 2, frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))


def _load(model_dir: Path, cache: Path, caps: Capabilities) -> Ensemble:
    settings = InferenceSettings(device="cpu", precision="auto", backend="openvino",
                                 openvino_cache_dir=cache)
    return Ensemble.load(model_dir, settings, capabilities=caps)


def _speed_file(model_dir: Path, cache: Path) -> Path:
    manifest = load_manifest(model_dir)
    return speed.cache_file(cache, manifest.model_version, manifest.input_size)


@pytest.mark.parametrize(("bf16", "fp32", "expected", "said"), [
    (1.8, 3.0, "fp32", "slower than fp32 on this CPU"),
    (5.0, 2.5, "bf16", "measured here at 5.00 img/s in bf16"),
])
def test_auto_keeps_the_faster_of_bf16_and_fp32_measured_on_this_cpu(
        tiny_ensemble: Path, tmp_path: Path, bf16: float, fp32: float, expected: str,
        said: str) -> None:
    path = _speed_file(tiny_ensemble, tmp_path)
    speed.store_rates(path, speed.cache_key(NO_AMX, "openvino", 0), {"bf16": bf16, "fp32": fp32})
    model = _load(tiny_ensemble, tmp_path, NO_AMX)
    assert (model.precision, model.backend) == (expected, "openvino")
    assert model.runner is not None and said in model.choice.reason


def test_the_first_start_times_both_and_records_the_rates(tiny_ensemble: Path,
                                                          tmp_path: Path) -> None:
    model = _load(tiny_ensemble, tmp_path, NO_AMX)
    rates = speed.cached_rates(_speed_file(tiny_ensemble, tmp_path),
                               speed.cache_key(NO_AMX, "openvino", 0))
    assert rates is not None and min(rates.values()) > 0
    assert model.precision == max(rates, key=lambda name: rates[name])
    assert "measured here" in model.choice.reason


def test_amx_and_explicit_settings_are_not_timed(tiny_ensemble: Path, tmp_path: Path) -> None:
    assert _load(tiny_ensemble, tmp_path, AMX).precision == "bf16"
    explicit = Ensemble.load(tiny_ensemble, InferenceSettings(
        device="cpu", precision="bf16", backend="openvino", openvino_cache_dir=tmp_path),
        capabilities=NO_AMX)
    assert explicit.precision == "bf16"
    assert not _speed_file(tiny_ensemble, tmp_path).exists()


def test_a_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "m-224-speed.json"
    path.write_text("{not json")
    assert speed.cached_rates(path, "k") is None
    speed.store_rates(path, "k", {"bf16": 1.0, "fp32": 2.0})
    assert speed.cached_rates(path, "k") == {"bf16": 1.0, "fp32": 2.0}
    choice = PrecisionChoice("bf16", "torch", "auto: native bf16")
    assert speed.decided(choice, {"bf16": 1.0, "fp32": 2.0}).precision == "fp32"
    assert speed.decided(choice, {"bf16": 2.0, "fp32": 1.0}).precision == "bf16"


INT8_AMX = Capabilities("AMX CPU with int8", 2, frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}),
    "AVX512")
# measured on an AMX Xeon (docs/benchmarks.md): int8 is faster raw, bf16 with its re-checks
AMX_RATES = {"int8": 15.14, "bf16": 13.73, "fp32": 3.93, "reference": 2.83}


@pytest.mark.parametrize(("int8_share", "expected"), [(0.087, "bf16"), (0.01, "int8")])
def test_int8_is_kept_only_where_it_is_fastest_with_its_rechecks(int8_share: float,
                                                                 expected: str) -> None:
    choice = PrecisionChoice("int8", "openvino", "auto: int8 dot products")
    decided = speed.decided(choice, AMX_RATES, {"int8": int8_share, "bf16": 0.049,
                                                "fp32": 0.049})
    assert (decided.precision, decided.backend) == (expected, "openvino")
    # the effective rates, best first, are in the reason `worker` and `model list` show
    assert "fastest exact path measured here" in decided.reason
    first = decided.reason.split(": ", 2)[2]
    assert first.startswith(f"{expected} ") and "re-scored" in first
    bf16 = 1 / (1 / 13.73 + 0.049 / 2.83)
    assert f"bf16 {bf16:.2f} img/s" in decided.reason


@pytest.fixture(scope="module")
def int8_ready(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
               ) -> tuple[Path, Path]:
    from tests.worker.int8_support import quantized_ensemble

    # threshold 1: no image is near it, so the build's measured re-check share is small
    model_dir, cache, graph = quantized_ensemble(tmp_path_factory.mktemp("speed8"),
                                                 shared_data, threshold=1.0)
    assert graph.ready and graph.auto_refusal(gated=False) is None, graph
    return model_dir, cache


def test_the_loader_takes_int8_or_the_path_timed_faster(int8_ready: tuple[Path, Path]
                                                        ) -> None:
    model_dir, cache = int8_ready
    path = _speed_file(model_dir, cache)
    key = speed.cache_key(INT8_AMX, "openvino", 0)
    path.unlink(missing_ok=True)
    first = _load(model_dir, cache, INT8_AMX)  # first start: all four timed and recorded
    rates = speed.cached_rates(path, key, ("int8", "bf16", "fp32", "reference"))
    assert rates is not None and min(rates.values()) > 0
    assert first.precision in ("int8", "bf16", "fp32") and first.runner is not None
    assert "fastest exact path measured here" in first.choice.reason
    # this tiny model's build saw no image near its threshold, so raw rates decide
    for rates, expected in (({**AMX_RATES, "int8": 100.0}, "int8"),
                            ({**AMX_RATES, "int8": 5.0}, "bf16")):
        speed.store_rates(path, key, rates)
        model = _load(model_dir, cache, INT8_AMX)
        assert (model.precision, model.backend) == (expected, "openvino")
        assert model.runner is not None
        if expected == "bf16":  # the default margins, not int8's widened ones
            assert model.exact_margin == InferenceSettings().exact_margin
