"""Fixtures for the worker tests: tiny random-weight ensembles, databases with instances."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

import cxr_triage
from db.instances import NewInstance, StudyFacts, mark_enqueued, record_instance
from db.migrate import upgrade
from db.models import InstanceStatus
from db.session import make_engine, make_session_factory
from tests.support import dicomgen
from tests.support.markers import mark_folder
from training.data import file_sha256
from training.manifest import EnsembleManifest, FoldEntry, model_version, write_manifest
from training.model import build_resnet50, save_fold_model
from training.preprocessing import PreprocessConfig
from worker.deliver.delivery import DeliveryOptions
from worker.report.study import ReportOptions
from worker.runtime import delivery_options, make_worker_engine, report_options
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions
from worker.settings import InferenceSettings, WorkerSettings

TEST_INPUT_SIZE = 64


def build_ensemble(directory: Path, *, folds: int = 2, threshold: float = 0.0,
                   seed: int = 0, label: str = "tiny test ensemble",
                   input_size: int = TEST_INPUT_SIZE) -> Path:
    """Random-weight ResNet-50 folds at 64 px with a real ``ensemble.json`` (training's writer).

    ``threshold`` 0.0 makes every image ``suspected``, which keeps end-to-end tests exact.
    """
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    entries = []
    for index in range(folds):
        path = directory / f"fold_{index:02d}.safetensors"
        save_fold_model(build_resnet50(num_classes=2), path, {"fold": str(index)})
        entries.append(FoldEntry(index, path.name, file_sha256(path), {}))
    write_manifest(directory, EnsembleManifest(
        architecture="resnet50", input_size=input_size,
        preprocessing=PreprocessConfig(size=input_size).to_dict(),
        class_names=["normal", "covid"], positive_class="covid", threshold=threshold,
        threshold_target_sensitivity=0.95, threshold_oof_specificity=0.5, folds=entries,
        dataset_fingerprint="0" * 64, seed=seed, package_version=cxr_triage.__version__,
        model_version=model_version([e.sha256 for e in entries]),
        created_at="2026-11-26T00:00:00+00:00", not_for_clinical_use=True, label=label,
    ))
    return directory


def load_cpu(model_dir: Path, **inference: Any) -> Ensemble:
    """``Ensemble.load`` on the CPU with these inference settings (others at their defaults)."""
    return Ensemble.load(model_dir, InferenceSettings(device="cpu", **inference))


def scoring_options(host: str = "localhost", **settings: Any) -> ScoringOptions:
    """Live scoring's options as the worker builds them, from ``WorkerSettings(**settings)``."""
    return ScoringOptions.from_settings(WorkerSettings(**settings), host)


@pytest.fixture(scope="session")
def tiny_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds, threshold 0 (every image suspected)."""
    return build_ensemble(tmp_path_factory.mktemp("ensemble") / "model")


@pytest.fixture(scope="session")
def three_fold_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three folds with a mid threshold: the worker accepts any fold count."""
    return build_ensemble(tmp_path_factory.mktemp("ensemble3") / "model", folds=3,
                          threshold=0.5, seed=1)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated database (SQLite or PostgreSQL) and the worker's session factory."""
    migrator = make_engine(db_url)  # as ``cxr-triage db upgrade`` does: not the worker's engine
    upgrade(migrator)
    migrator.dispose()
    engine = make_worker_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


AddInstance = Callable[..., int]


@pytest.fixture
def add_instance(tmp_path: Path, sessions: sessionmaker[Session]) -> AddInstance:
    """Write a generated radiograph and record it as the node would (``queued``)."""
    counter = iter(range(10_000))

    def add(study_uid: str, *, seed: int = 0, path: Path | None = None,
            status: InstanceStatus = InstanceStatus.RECEIVED) -> int:
        target = path or tmp_path / "storage" / f"{next(counter):04d}.dcm"
        if path is None:
            dicomgen.write(dicomgen.radiograph(study_uid=study_uid, seed=seed), target)
        ds = dcmread(target, stop_before_pixels=True, force=True)
        item = NewInstance(
            study=StudyFacts(study_uid, "ACC1", "PID", "NAME^X", "20261126", "chest"),
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.SeriesInstanceUID), calling_ae="STORESCU",
            file_path=str(target), size_bytes=target.stat().st_size,
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            content_sha256=file_sha256(target), modality="CR", body_part_examined="CHEST",
            view_position="PA", status=status, status_reason=None,
        )
        with sessions.begin() as session:
            instance_id = record_instance(session, item).instance_id
            mark_enqueued(session, instance_id)
        return instance_id

    return add



def report_opts(report_dir: Path, **changes: Any) -> ReportOptions:
    """Reporting options from default worker settings, with ``changes``."""
    base = report_options(WorkerSettings(), "test-host")
    return dataclasses.replace(base, report_dir=report_dir, **changes)


def delivery_opts(**changes: Any) -> DeliveryOptions:
    """Delivery options from default worker settings, with ``changes``."""
    return dataclasses.replace(delivery_options(WorkerSettings()), **changes)


INTEGRATION_MODULES = frozenset({"test_up.py", "test_worker_e2e.py", "test_recovery.py",
                                 "test_delivery_outage.py",
                                 "test_gate_e2e.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start node, worker or Orthanc processes (tests/support/markers.py)."""
    mark_folder(items, Path(__file__).parent, INTEGRATION_MODULES)
