"""Re-scoring throughput against the ensemble's own batched throughput, in one run.

Run: ``.venv/bin/python bench/rescore.py [--images 16] [--workers N] [--threads 0]
[--precision auto] [--backend auto]`` (the worker's defaults: the same backend as live).

Generates ``--images`` stored CR instances per transfer syntax (uncompressed 12-bit, and
JPEG 2000 lossless when pylibjpeg-openjpeg can encode), records them in a SQLite database as
the node would, and re-scores them with ``worker.rescore.run.score_local`` (DataLoader decoding
ahead of the model, scores recorded per batch) using a 10-fold random-weight ResNet-50
ensemble at 224 px. The same loaded ensemble's ``predict`` on preloaded tensors (the
``bench/ensemble.py`` measurement, ``images_per_second``), timed before and after the
re-scoring passes and averaged, is the ceiling; the ratio says how much of it the whole path
keeps. The live path on copies of the same files, stored ``queued`` as the node leaves them,
is measured too: ``worker.score.live.score_instances`` as a score task runs it (claims,
decoding ahead in its decoding process, predict, record), without the broker. The issue's
ratio is re-scoring against that live rate, same backend, same files.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.synthetic import cr_dataset
from db.instances import NewInstance, StudyFacts, record_instance
from db.migrate import upgrade
from db.models import InstanceStatus
from db.runs import Selection, select_scope
from db.session import make_engine, make_session_factory
from training.data import file_sha256
from worker.rescore.run import RescoreRequest, new_run, score_local
from worker.runtime import make_worker_engine
from worker.score.batch import ImageRef
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions, score_instances
from worker.settings import (
    InferenceSettings,
    RescoreSettings,
    WorkerSettings,
    default_loader_workers,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine

ROWS, COLUMNS = 2500, 2048


def _bench_ensemble_module() -> ModuleType:
    """bench/ensemble.py, loaded by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_ensemble",
                                                  Path(__file__).with_name("ensemble.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _base_image(compress: bool) -> Dataset:
    """A 2500x2048 12-bit CR with smooth anatomy-like structure plus noise."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    smooth = 2000 + 900 * np.sin(x / 180.0) * np.cos(y / 240.0)
    noise = np.random.default_rng(0).normal(0, 40, size=(ROWS, COLUMNS))
    pixels = np.clip(smooth + noise, 0, 4095).astype(np.uint16)
    ds = cr_dataset(pixels, study_uid=generate_uid(), series_uid=generate_uid(),
                    accession="BENCH")
    if compress:
        ds.compress(JPEG2000Lossless)
    return ds


def _store(base: Dataset, directory: Path, count: int, study_uid: str,
           status: InstanceStatus = InstanceStatus.SCORED) -> list[NewInstance]:
    """``count`` copies of ``base`` with their own UIDs, written as files."""
    items = []
    for index in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = directory / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        items.append(NewInstance(
            StudyFacts(study_uid), str(ds.SOPInstanceUID), str(ds.SOPClassUID),
            str(ds.SeriesInstanceUID), "BENCH", str(path), path.stat().st_size,
            str(ds.file_meta.TransferSyntaxUID), file_sha256(path), "CR", "CHEST", "PA",
            status, None))
    return items


def _rescore_rate(factory: sessionmaker[Session], ensemble: Ensemble, study_uid: str,
                  workers: int, batch: int) -> tuple[float, int]:
    """Images/s of score_local over one study's instances (the run's real path)."""
    with factory() as session:
        rows = select_scope(session, Selection(study_uids=(study_uid,)), ensemble.model_version)
    todo = [ImageRef(r.instance_id, r.file_path, r.content_sha256) for r in rows]
    run_id = new_run(factory, RescoreRequest(model_dir=ensemble.directory),
                     ensemble.model_version)
    worker = WorkerSettings(rescore=RescoreSettings(batch=batch, loader_workers=workers,
                                                    progress_log_s=1e9))
    started = time.perf_counter()
    written = score_local(factory, ensemble, todo, run_id=run_id, worker=worker)
    return written / (time.perf_counter() - started), written


def _live_rate(factory: sessionmaker[Session], ensemble: Ensemble, items: list[NewInstance],
               batch: int) -> float:
    """Images/s of one live score task over ``items``, recorded ``queued`` first (the only
    queued rows, so the task claims exactly these)."""
    with factory.begin() as session:
        ids = [record_instance(session, item).instance_id for item in items]
    options = ScoringOptions(batch_size=batch, indeterminate_std=WorkerSettings().indeterminate_std,
                             lease_s=600.0, worker_host="bench", decode_ahead=True,
                             max_batches=len(ids))
    started = time.perf_counter()
    run = score_instances(factory, ids[0], "bench-live", lambda: ensemble, options)
    return len(run.scored) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="instances per transfer syntax")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=default_loader_workers(),
                        help="DataLoader decoding processes (default as rescore's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--precision", default="auto", help="as TRIAGE_INFERENCE_PRECISION")
    parser.add_argument("--backend", default="auto", help="as TRIAGE_INFERENCE_BACKEND")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench_ensemble = _bench_ensemble_module()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        bench_ensemble.write_random_ensemble(root / "model", args.folds, 224)
        ensemble = Ensemble.load(root / "model", InferenceSettings(
            device="cpu", torch_threads=args.threads, precision=args.precision,
            backend=args.backend, openvino_cache_dir=root / "openvino"))
        url = f"sqlite:///{root / 'bench.db'}"
        migrator = make_engine(url)  # as `cxr-triage db upgrade` does; then the worker's engine
        upgrade(migrator)
        migrator.dispose()
        engine = make_worker_engine(url)
        sessions = make_session_factory(engine)
        syntaxes = {"uncompressed": False}
        try:
            _base_image(True)
            syntaxes["JPEG 2000 lossless"] = True
        except Exception as exc:  # no encoder: report uncompressed only
            print(f"JPEG 2000 encoding unavailable ({exc}); uncompressed only")
        studies, queued = {}, {}
        for name, compress in syntaxes.items():
            folder = root / name.replace(" ", "_")
            folder.mkdir()
            studies[name] = generate_uid()
            base = _base_image(compress)
            with sessions.begin() as session:
                for item in _store(base, folder, args.images, studies[name]):
                    record_instance(session, item)
            (folder / "live").mkdir()
            queued[name] = _store(base, folder / "live", args.images, generate_uid(),
                                  InstanceStatus.QUEUED)
        def ceiling_rate() -> float:
            return float(bench_ensemble.images_per_second(ensemble.predict, args.batch, 224,
                                                          args.images))

        (root / "warm").mkdir()  # the live path's decoding process starts once per worker:
        # warm it up with a second batch, which that process decodes
        _live_rate(sessions, ensemble, _store(_base_image(False), root / "warm", 3,
                                              generate_uid(), InstanceStatus.QUEUED), 2)
        before = ceiling_rate()
        rates, live = {}, {}
        for name in syntaxes:  # interleaved, so drifting load touches both alike
            live[name] = _live_rate(sessions, ensemble, queued[name], args.batch)
            rates[name] = _rescore_rate(sessions, ensemble, studies[name], args.workers,
                                        args.batch)[0]
        ceiling = (before + ceiling_rate()) / 2  # before and after: contention drifts
        print(describe_machine())
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.folds} "
              f"folds at 224 px, batch {args.batch}, {args.workers} loader workers, "
              f"{args.images} images of {ROWS}x{COLUMNS} per syntax; inference "
              f"{ensemble.choice.describe()}")
        print(f"{'path':58s} {'img/s':>7s} {'of ceiling':>10s} {'of live':>8s}")
        print(f"{'Ensemble.predict on preloaded tensors (ceiling)':58s} {ceiling:7.2f} "
              f"{1.0:10.2f}")
        for name, rate in rates.items():
            print(f"{'live score task, ' + name:58s} {live[name]:7.2f} "
                  f"{live[name] / ceiling:10.2f} {1.0:8.2f}")
            print(f"{'rescore, ' + name:58s} {rate:7.2f} {rate / ceiling:10.2f} "
                  f"{rate / live[name]:8.2f}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
