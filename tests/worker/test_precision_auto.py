"""``auto`` precision: never a precision the hardware lacks, shown with its reason.

Each test injects a capability report (``common.hardware.Capabilities``) for a CPU or GPU this
machine may not be: Zen 3 (AVX2 only), Zen 4 (AVX-512 BF16/VNNI), Sapphire Rapids (AMX), an old
CPU without AVX2, GPUs with and without bf16.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest

from common.hardware import INT8_FLAGS, RELEVANT_FLAGS, Capabilities, parse_cpuinfo
from tests.worker.conftest import load_cpu
from training.manifest import load_manifest
from worker.models.cli import inference_line
from worker.score import speed
from worker.score.ensemble import Ensemble, EnsembleError
from worker.score.precision import (
    Int8Error,
    Int8Graph,
    PrecisionError,
    choose_precision,
    describe_plan,
    graph_path,
    int8_graph,
    weights_digest,
)
from worker.settings import BACKENDS, PRECISIONS, InferenceSettings, WorkerSettings

ZEN3 = Capabilities("AMD EPYC 7B13 (Zen 3)", 2, frozenset({"avx2"}), "AVX2")
ZEN4 = Capabilities("AMD EPYC 9B14 (Zen 4)", 2, frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"}), "AVX512")
SAPPHIRE = Capabilities("Intel Xeon 8480+", 2, frozenset(
    {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}))
OLD = Capabilities("Intel Xeon E5-2670", 2, frozenset(), "DEFAULT")
A100 = Capabilities("x", 2, frozenset({"avx2"}), gpu="NVIDIA A100", gpu_capability=(8, 0),
                    gpu_bf16=True)
T4 = Capabilities("x", 2, frozenset({"avx2"}), gpu="Tesla T4", gpu_capability=(7, 5))

ZEN3_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni
"""


def every_cpu() -> list[Capabilities]:
    """A report for every combination of the flags that decide the choice."""
    deciding = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni",
                "amx_int8")
    return [Capabilities("any", 2, frozenset(flags))
            for n in range(len(deciding) + 1) for flags in itertools.combinations(deciding, n)]


def test_auto_never_picks_a_precision_the_cpu_lacks() -> None:
    for caps, openvino, ready, refusal in itertools.product(
            every_cpu(), (True, False), (True, False), (None, "re-scores too many")):
        for backend in ("auto", "torch") + (("openvino",) if openvino else ()):
            choice = choose_precision("auto", backend, device="cpu", caps=caps,
                                      openvino=openvino, int8_ready=ready, int8_refusal=refusal)
            if choice.precision == "bf16":
                assert caps.native_bf16, (caps.flags, choice)
            if choice.precision == "int8":
                assert caps.flags & INT8_FLAGS and ready and choice.backend == "openvino"
                assert refusal is None  # its measured error allows it
            assert choice.backend == "torch" or openvino


def _measured(share: float, gate: float | None = 0.2) -> Int8Graph:
    error = Int8Error(images=200, max_dp=0.01, gate_deviation=gate, exact_margin=0.02,
                      gate_margin=0.4, rescore_share=share)
    return Int8Graph(True, Path("m.xml"), "the int8 graph of model m is built", error)


@pytest.mark.parametrize(("graph", "gated", "allowed", "why"), [
    (_measured(0.03), True, True, ""),
    (_measured(0.03, gate=None), False, True, ""),  # no gate: nothing of it to measure
    (_measured(0.03, gate=None), True, False, "gate error is unmeasured"),  # gate came later
    (_measured(0.35), True, False, "re-score 35% of images"),
    (Int8Graph(True, Path("m.xml"), "built"), False, False, "predates error measurement"),
    (Int8Graph(False, Path("m.xml"), "no int8 graph of model m"), False, False, "no int8 graph"),
])
def test_auto_takes_int8_only_where_its_measured_error_keeps_rechecks_rare(
        graph: Int8Graph, gated: bool, allowed: bool, why: str) -> None:
    refusal = graph.auto_refusal(gated)
    assert (refusal is None) == allowed and why in (refusal or "")
    choice = choose_precision("auto", "auto", device="cpu", caps=ZEN4, openvino=True,
                              int8_ready=graph.ready, int8_reason=graph.reason,
                              int8_refusal=refusal)
    assert choice.precision == ("int8" if allowed else "bf16")
    if not allowed:
        assert why in choice.reason  # `worker` and `model list` show why not int8


def test_an_int8_graph_reads_its_measured_error(tmp_path: Path) -> None:
    path = graph_path(tmp_path, "m", 224, "int8")
    path.write_text("<net/>")
    path.with_suffix(".bin").write_bytes(b"")
    meta = {"weights_sha256": weights_digest(["a"]), "calibration": {"images": 300},
            "error": {"images": 200, "max_dp": 0.05, "gate_deviation": 0.3,
                      "exact_margin": 0.1, "gate_margin": 0.6, "rescore_share": 0.25}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    graph = int8_graph(tmp_path, "m", 224, ["a"])
    assert graph.ready and graph.error is not None
    assert (graph.error.exact_margin, graph.error.gate_margin) == (0.1, 0.6)
    assert "re-score 25% of images" in (graph.auto_refusal(True) or "")
    del meta["error"]["rescore_share"]  # a damaged record counts as unmeasured
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert int8_graph(tmp_path, "m", 224, ["a"]).error is None


@pytest.mark.parametrize(("caps", "openvino", "ready", "expected"), [
    (ZEN3, True, True, ("fp32", "openvino")),  # no VNNI, no native bf16: OpenVINO fp32
    (ZEN3, False, False, ("fp32", "torch")),
    (OLD, True, False, ("fp32", "openvino")),
    (ZEN4, True, True, ("int8", "openvino")),
    (ZEN4, True, False, ("bf16", "openvino")),  # no int8 graph built yet
    (ZEN4, False, False, ("bf16", "torch")),  # reason: OpenVINO not installed
    (SAPPHIRE, True, True, ("int8", "openvino")),
])
def test_auto_takes_the_fastest_exact_path(caps: Capabilities, openvino: bool, ready: bool,
                                           expected: tuple[str, str]) -> None:
    choice = choose_precision("auto", "auto", device="cpu", caps=caps, openvino=openvino,
                              int8_ready=ready, int8_reason="no int8 graph of model x")
    assert (choice.precision, choice.backend) == expected
    assert choice.reason.startswith("auto: ")
    if caps is ZEN3:
        assert "no native bf16" in choice.reason and "no VNNI" in choice.reason
    if caps is ZEN4 and openvino and not ready:
        assert "no int8 graph of model x" in choice.reason


def test_auto_on_cuda_takes_bf16_only_where_the_gpu_has_it() -> None:
    assert choose_precision("auto", "auto", device="cuda", caps=A100,
                            openvino=True).precision == "bf16"
    assert choose_precision("auto", "auto", device="cuda", caps=T4,
                            openvino=True).precision == "fp32"
    with pytest.raises(PrecisionError, match="CPU"):
        choose_precision("int8", "auto", device="cuda", caps=A100, openvino=True)


def test_explicit_choices_are_honoured_with_a_warning_where_emulated(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        choice = choose_precision("bf16", "torch", device="cpu", caps=ZEN3, openvino=True)
    assert (choice.precision, choice.backend) == ("bf16", "torch")
    assert "NO native bf16" in caplog.text
    with pytest.raises(PrecisionError, match="model quantize"):
        choose_precision("int8", "auto", device="cpu", caps=ZEN4, openvino=True,
                         int8_ready=False, int8_reason="build it with `cxr-triage model quantize`")
    with pytest.raises(PrecisionError, match="openvino package"):
        choose_precision("fp32", "openvino", device="cpu", caps=ZEN4, openvino=False)
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "int8"}
    assert set(BACKENDS) == {"auto", "torch", "openvino"}


def test_cpuinfo_flags_and_description() -> None:
    name, flags = parse_cpuinfo(ZEN3_CPUINFO)
    assert (name, flags) == ("AMD EPYC 7B13", frozenset({"avx2"}))
    caps = Capabilities(name, 2, flags)
    assert (caps.kind, caps.native_bf16, caps.int8_dot) == ("AVX2", False, False)
    assert ZEN4.kind == "AVX-512 BF16/VNNI" and SAPPHIRE.kind == "AMX"
    assert "avx512_bf16" in ZEN4.describe() and set(RELEVANT_FLAGS) >= ZEN4.flags


def test_the_loader_resolves_auto_for_the_injected_cpu(tiny_ensemble: Path,
                                                       tmp_path: Path) -> None:
    settings = InferenceSettings(device="cpu", precision="auto", backend="torch",
                                 openvino_cache_dir=tmp_path)
    manifest = load_manifest(tiny_ensemble)  # Zen 4's bf16 as timed there (no AMX: timed)
    speed.store_rates(speed.cache_file(tmp_path, manifest.model_version, manifest.input_size),
                      speed.cache_key(ZEN4, "torch", 0), {"bf16": 4.0, "fp32": 1.9})
    on_zen3 = Ensemble.load(tiny_ensemble, settings, capabilities=ZEN3)
    assert (on_zen3.precision, on_zen3.backend, on_zen3.runner) == ("fp32", "torch", None)
    on_zen4 = Ensemble.load(tiny_ensemble, settings, capabilities=ZEN4)
    assert (on_zen4.precision, on_zen4.backend) == ("bf16", "torch")
    assert on_zen4.runner is not None and on_zen4.exact_margin == settings.exact_margin
    assert "native bf16" in on_zen4.choice.reason


def test_explicit_int8_without_a_graph_says_how_to_build_it(tiny_ensemble: Path,
                                                            tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match="cxr-triage model quantize"):
        load_cpu(tiny_ensemble, precision="int8", backend="auto", openvino_cache_dir=tmp_path)


def test_an_int8_graph_of_other_weights_is_stale(tmp_path: Path) -> None:
    path = graph_path(tmp_path, "abc", 224, "int8")
    path.write_text("<net/>")
    path.with_suffix(".bin").write_bytes(b"")
    path.with_suffix(".json").write_text('{"weights_sha256": "0"}')
    status = int8_graph(tmp_path, "abc", 224, ["11", "22"])
    assert not status.ready and "other weights" in status.reason


def test_model_list_and_worker_start_show_the_choice(tiny_ensemble: Path, tmp_path: Path
                                                     ) -> None:
    line = describe_plan(tiny_ensemble, "auto", "auto", device_setting="cpu", caps=ZEN3,
                         cache_dir=tmp_path)
    assert line.startswith("fp32 on openvino (auto: no native bf16")
    line = describe_plan(tiny_ensemble, "auto", "auto", device_setting="cpu", caps=ZEN4,
                         cache_dir=tmp_path)
    assert line.startswith("bf16 on openvino (auto: native bf16 (avx512_bf16)")
    assert "not int8: no int8 graph of model" in line and "model quantize" in line
    missing = describe_plan(tmp_path / "none", "auto", "auto", device_setting="cpu",
                            caps=ZEN4, cache_dir=tmp_path)
    assert missing.startswith("unknown until the model loads")
    assert WorkerSettings.from_env({}).inference.precision == "auto"


def test_model_list_line_is_the_loaders_choice_on_this_machine(tiny_ensemble: Path,
                                                               tmp_path: Path) -> None:
    manifest = json.loads((tiny_ensemble / "ensemble.json").read_text())
    settings = WorkerSettings(inference=InferenceSettings(
        device="cpu", precision="auto", backend="torch", openvino_cache_dir=tmp_path))
    loaded = Ensemble.load(tiny_ensemble, settings.inference)  # this machine, detected
    line = inference_line(manifest, settings)  # after any timing the loader did and recorded
    assert line == f"    inference here: {loaded.choice.describe()}"
