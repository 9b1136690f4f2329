"""Re-scoring loads the ensemble as live scoring does: the configured precision and backend
(``auto`` and int8 included).

Local re-scoring (``load_model`` for ``score_local``) and the distributed task's ensemble cache
both go through ``Ensemble.load(model_dir, settings.inference)``; before, both dropped
precision, backend, OpenVINO cache and exact margin and ran torch fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from celery import Celery
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.hardware import detect
from common.queues import TASK_RESCORE_BATCH, BrokerSettings, make_celery
from db.models import Instance, Score
from db.settings import DbSettings
from tests.worker.conftest import AddInstance, load_cpu
from tests.worker.int8_support import quantized_ensemble
from training.manifest import load_manifest
from worker.rescore.modes import SendMode
from worker.rescore.run import RescoreRequest, load_model, run_rescore
from worker.rescore.task import register_rescore_task
from worker.runtime import WorkerContext
from worker.score import speed
from worker.score.precision import choose_precision, int8_graph
from worker.settings import InferenceSettings, RescoreSettings, WorkerSettings

BF16 = InferenceSettings(device="cpu", precision="bf16", exact_margin=0.0)


def _files(sessions: sessionmaker[Session], ids: list[int]) -> list[Path]:
    with sessions() as session:
        rows = session.scalars(select(Instance).where(Instance.id.in_(ids)).order_by(Instance.id))
        return [Path(row.file_path) for row in rows]


def _recorded_means(sessions: sessionmaker[Session], ids: list[int]) -> list[float]:
    with sessions() as session:
        rows = session.scalars(select(Score).where(Score.instance_id.in_(ids))
                               .order_by(Score.instance_id))
        return [row.probability_mean for row in rows]


def test_load_model_honours_precision_and_backend(tiny_ensemble: Path, tmp_path: Path) -> None:
    reference = load_model(tiny_ensemble, WorkerSettings(
        inference=InferenceSettings(device="cpu")))
    assert (reference.precision, reference.backend, reference.runner) == ("fp32", "torch", None)

    bf16 = load_model(tiny_ensemble, WorkerSettings(inference=BF16))
    assert (bf16.precision, bf16.backend, bf16.exact_margin) == ("bf16", "torch", 0.0)
    assert bf16.runner is not None

    cache = tmp_path / "ov"
    openvino = load_model(tiny_ensemble, WorkerSettings(inference=InferenceSettings(
        device="cpu", backend="openvino", openvino_cache_dir=cache)))
    assert (openvino.precision, openvino.backend) == ("fp32", "openvino")
    assert openvino.runner is not None and len(list(cache.glob("*.xml"))) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_local_rescore_scores_in_the_configured_precision(
    sessions: sessionmaker[Session], add_instance: AddInstance, tiny_ensemble: Path
) -> None:
    ids = [add_instance(generate_uid(), seed=i) for i in range(3)]
    # Decoding in this process: DataLoader worker processes would leave torch's SIGCHLD
    # handler in the pytest process, which crashed a later test's subprocess. The loader's
    # worker processes are covered by the tests that run `cxr-triage rescore` as a process.
    worker = WorkerSettings(model_dir=tiny_ensemble, inference=BF16,
                            rescore=RescoreSettings(loader_workers=0))

    def no_broker() -> Celery:
        raise AssertionError("a local run with --send none publishes nothing")

    result = run_rescore(sessions, RescoreRequest(model_dir=tiny_ensemble, send=SendMode.NONE),
                         worker=worker, broker=no_broker)

    assert result.exit_code == 0 and result.scored_now == 3
    batch = torch.stack([load_cpu(tiny_ensemble).preprocess(p) for p in _files(sessions, ids)])
    fp32 = load_cpu(tiny_ensemble).predict(batch).mean
    bf16 = load_cpu(tiny_ensemble, precision="bf16", exact_margin=0.0).predict(batch).mean
    recorded = _recorded_means(sessions, ids)
    assert recorded == pytest.approx(list(bf16), abs=1e-6)
    assert max(abs(a - b) for a, b in zip(recorded, fp32, strict=True)) > 1e-4


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_distributed_task_loads_with_the_worker_inference_settings(
    sessions: sessionmaker[Session], add_instance: AddInstance, tiny_ensemble: Path,
    db_url: str, tmp_path: Path,
) -> None:
    ids = [add_instance(generate_uid(), seed=i) for i in range(2)]
    cache_dir = tmp_path / "ov"
    settings = WorkerSettings(
        model_dir=tiny_ensemble, db=DbSettings(db_url),
        broker=BrokerSettings(filesystem_dir=tmp_path / "broker"),
        inference=InferenceSettings(device="cpu", precision="bf16", backend="openvino",
                                    openvino_cache_dir=cache_dir, exact_margin=0.0))
    app = make_celery(settings.broker)
    cache = register_rescore_task(app, WorkerContext(settings))
    version = load_cpu(tiny_ensemble).model_version

    app.tasks[TASK_RESCORE_BATCH](ids, str(tiny_ensemble), version)  # run here, not queued

    model = cache.get(tiny_ensemble)  # the ensemble the task scored with
    assert (model.precision, model.backend, model.exact_margin) == ("bf16", "openvino", 0.0)
    assert model.runner is not None and len(list(cache_dir.glob("*.xml"))) == 1
    batch = torch.stack([model.preprocess(p) for p in _files(sessions, ids)])
    assert _recorded_means(sessions, ids) == pytest.approx(list(model.predict(batch).mean),
                                                           abs=1e-6)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """A tiny ensemble and the cache holding its int8 graph (NNCF, real training images)."""
    # threshold 1: no image is near it, so int8's own probabilities reach the record
    model_dir, cache, graph = quantized_ensemble(tmp_path_factory.mktemp("int8"), shared_data,
                                                 threshold=1.0)
    assert graph.ready, graph.reason
    return model_dir, cache


def test_rescore_loads_auto_and_int8_as_live_scoring_does(quantized: tuple[Path, Path]) -> None:
    model_dir, cache = quantized
    auto = load_model(model_dir, WorkerSettings(inference=InferenceSettings(
        device="cpu", precision="auto", backend="auto", openvino_cache_dir=cache)))
    manifest = load_manifest(model_dir)
    graph = int8_graph(cache, manifest.model_version, manifest.input_size,
                       [f.sha256 for f in manifest.folds])
    expected = choose_precision("auto", "auto", device="cpu", caps=detect(), openvino=True,
                                int8_ready=True, int8_reason="",
                                int8_refusal=graph.auto_refusal(gated=False))
    if speed.worth_timing("auto", expected, detect(), "cpu"):  # timed against each other
        assert auto.backend == expected.backend and "measured here" in auto.choice.reason
        assert auto.precision in set(speed.candidates(expected, detect())) - {speed.REFERENCE}
    else:
        assert (auto.precision, auto.backend) == (expected.precision, expected.backend)
    assert auto.runner is not None  # every CPU gets a fast path here: OpenVINO is installed
    int8 = load_model(model_dir, WorkerSettings(inference=InferenceSettings(
        device="cpu", precision="int8", backend="auto", openvino_cache_dir=cache)))
    assert (int8.precision, int8.backend, int8.runner is not None) == ("int8", "openvino", True)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_local_rescore_scores_in_int8(sessions: sessionmaker[Session], add_instance: AddInstance,
                                      quantized: tuple[Path, Path]) -> None:
    model_dir, cache = quantized
    ids = [add_instance(generate_uid(), seed=i) for i in range(3)]
    int8 = InferenceSettings(device="cpu", precision="int8", backend="auto",
                             openvino_cache_dir=cache, exact_margin=0.0)
    worker = WorkerSettings(model_dir=model_dir, inference=int8,
                            rescore=RescoreSettings(loader_workers=0))

    def no_broker() -> Celery:
        raise AssertionError("a local run with --send none publishes nothing")

    result = run_rescore(sessions, RescoreRequest(model_dir=model_dir, send=SendMode.NONE),
                         worker=worker, broker=no_broker)

    assert result.exit_code == 0 and result.scored_now == 3
    model = load_cpu(model_dir, precision="int8", backend="auto", openvino_cache_dir=cache,
                     exact_margin=0.0)
    batch = torch.stack([model.preprocess(p) for p in _files(sessions, ids)])
    fp32 = load_cpu(model_dir).predict(batch).mean
    recorded = _recorded_means(sessions, ids)
    assert recorded == pytest.approx(list(model.predict(batch).mean), abs=1e-6)
    assert max(abs(a - b) for a, b in zip(recorded, fp32, strict=True)) > 1e-5
