"""The workloads of ``bench/threads.py``, each run in its own process (``run_child``)."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid

from cxr_triage.synthetic import cr_dataset, radiograph
from db.instances import NewInstance, StudyFacts, mark_enqueued, record_instance
from db.migrate import upgrade
from db.models import InstanceStatus
from db.session import make_engine, make_session_factory
from tests.support.syntaxes import ENCODERS
from tests.worker.conftest import build_ensemble
from training.data import file_sha256
from worker.runtime import make_worker_engine
from worker.score.ahead import decode_ahead
from worker.score.batch import ImageRef
from worker.score.ensemble import Ensemble
from worker.score.live import ScoringOptions, score_instances
from worker.settings import InferenceSettings

BATCH = 8
OV_PINNING_ENV = "CXR_BENCH_OPENVINO_PINNING"  # "0": threads not pinned to cores


def prepare(workdir: Path, workloads: list[str], args: argparse.Namespace) -> None:
    """The random-weight ensemble and, for ``live``, the compressed files (made once)."""
    if {"infer", "live", "openvino"} & set(workloads) and not (workdir / "model").exists():
        build_ensemble(workdir / "model", folds=args.folds, input_size=args.size,
                       threshold=0.5, label="threads benchmark (random weights)")
    if "live" in workloads and not (workdir / "files").exists():
        _make_files(workdir / "files", args.images)


def _make_files(directory: Path, count: int) -> None:
    """``count`` 2500 x 2000 12-bit CRs, half JPEG 2000 lossless, half JPEG-LS lossless
    (tests/support/syntaxes.py's encoders), each a copy of one encoded image per syntax."""
    directory.mkdir(parents=True)
    pixels = radiograph(np.random.default_rng(0), covid=True, size=2500)[:2500, :2000]
    for uid in (JPEG2000Lossless, JPEGLSLossless):
        ds = cr_dataset((pixels * 4095).astype(np.uint16), study_uid=generate_uid(),
                        series_uid=generate_uid(), accession="THREADS")
        source = ENCODERS[uid][1](ds, directory / f"{uid.name[:8]}.src.dcm")
        for index in range(count // 2):
            shutil.copyfile(source, directory / f"{uid.name[:8]}-{index:03d}.dcm")


def run_child(args: argparse.Namespace) -> float:
    """img/s of ``args.child`` with ``args.threads`` torch threads."""
    torch.set_num_threads(args.threads)
    if args.child in ("infer", "openvino"):
        return _infer(args)
    if args.child == "train":
        return _train(args)
    return _live(args)


def _load(args: argparse.Namespace) -> Ensemble:
    if args.child != "openvino":
        return Ensemble.load(args.workdir / "model",
                             InferenceSettings(device="cpu", torch_threads=args.threads))
    if os.environ.get(OV_PINNING_ENV) == "0":  # the CPU plugin's setting, for every Core
        import openvino as ov

        ov.Core().set_property("CPU", {"ENABLE_CPU_PINNING": False})
    return Ensemble.load(args.workdir / "model", InferenceSettings(
        device="cpu", torch_threads=args.threads, precision="bf16", backend="openvino",
        openvino_cache_dir=Path(args.workdir) / "openvino"))


def _infer(args: argparse.Namespace) -> float:
    ensemble = _load(args)
    batch = torch.randn(BATCH, 3, args.size, args.size)
    ensemble.predict(batch)  # warm-up
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        ensemble.predict(batch)
        images += BATCH
    return images / (time.perf_counter() - started)


def _train(args: argparse.Namespace) -> float:
    from torch import nn
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None, num_classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = torch.randn(16, 3, 128, 128), torch.randint(0, 2, (16,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        step()
        count += 16
    return count / (time.perf_counter() - started)


def _live(args: argparse.Namespace) -> float:
    """Every file scored by one task's chain of batches, as the live worker does."""
    ensemble = _load(args)
    ensemble.predict(torch.randn(BATCH, 3, args.size, args.size))  # warm-up
    files = sorted(p for p in (Path(args.workdir) / "files").glob("*.dcm")
                   if not p.name.endswith(".src.dcm"))
    if args.decode_ahead:  # a running worker started its decoding process long ago
        decode_ahead([ImageRef(0, str(files[0]), "")], ensemble)
    root = Path(args.workdir) / f"live-{time.monotonic_ns()}"
    root.mkdir()
    url = f"sqlite:///{root / 'triage.db'}"
    migrator = make_engine(url)
    upgrade(migrator)
    migrator.dispose()
    sessions = make_session_factory(make_worker_engine(url))
    ids = [_record(sessions, path) for path in files]
    options = ScoringOptions(batch_size=BATCH, indeterminate_std=0.2, lease_s=600.0,
                             worker_host="bench", decode_ahead=args.decode_ahead,
                             max_batches=len(ids))
    started = time.perf_counter()
    run = score_instances(sessions, ids[0], "bench", lambda: ensemble, options)
    seconds = time.perf_counter() - started
    if len(run.scored) != len(ids):
        raise RuntimeError(f"scored {len(run.scored)} of {len(ids)}")
    shutil.rmtree(root, ignore_errors=True)
    return len(ids) / seconds


def _record(sessions: object, path: Path) -> int:
    ds = dcmread(path, stop_before_pixels=True)
    item = NewInstance(
        study=StudyFacts(generate_uid(), "ACC", "PID", "NAME", "20261201", "chest"),
        sop_instance_uid=generate_uid(), sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=generate_uid(), calling_ae="BENCH", file_path=str(path),
        size_bytes=path.stat().st_size, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        content_sha256=file_sha256(path), modality="CR", body_part_examined="CHEST",
        view_position="PA", status=InstanceStatus.RECEIVED, status_reason=None,
    )
    with sessions.begin() as session:  # type: ignore[attr-defined]
        instance_id = record_instance(session, item).instance_id
        mark_enqueued(session, instance_id)
    return int(instance_id)
