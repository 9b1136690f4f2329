"""End-to-end latency: from the node's C-STORE acknowledgement to the SR stored in Orthanc.

Starts a private redis-server, Orthanc, the node, a scoring worker and a delivery worker (real
processes, as ``cxr-triage up`` runs them), sends N single-image 2500 x 2000 CR studies with
storescu at a fixed rate, and reads when each study's SR was accepted by Orthanc (the
delivery's ``sent_at``). Prints p50 and p95, with the configured quiet time (a study is
reported only after it has been quiet that long), the mean scoring latency and the scoring
throughput (images over the time from the first acknowledgement to the last score).

``--syntax mixed`` (the default) alternates JPEG 2000 lossless and JPEG-LS lossless studies
(tests/support/syntaxes.py's encoders); ``--decode-ahead on,off`` runs the same stream once
with the worker decoding the next batch while it predicts the current one, and once without,
on a fresh stack each. A short ``--interval`` makes a backlog, where decoding ahead shows.

    .venv/bin/python bench/e2e.py --studies 10 --interval 6 --quiet 2 --folds 10 --input 224
    .venv/bin/python bench/e2e.py --studies 24 --interval 0.5 --decode-ahead on,off
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from cxr_triage.synthetic import cr_dataset, radiograph
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.support.syntaxes import ENCODERS
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query

SYNTAXES: dict[str, tuple[UID | None, ...]] = {
    "explicit": (None,),  # as cr_dataset writes it: explicit VR little endian
    "j2k": (JPEG2000Lossless,),
    "jls": (JPEGLSLossless,),
    "mixed": (JPEG2000Lossless, JPEGLSLossless),
}


def make_study(directory: Path, index: int, rows: int, columns: int,
               syntax: UID | None) -> tuple[str, Path]:
    rng = np.random.default_rng(index)
    pixels = radiograph(rng, covid=index % 2 == 0, size=max(rows, columns))[:rows, :columns]
    study_uid = generate_uid()
    ds = cr_dataset((pixels * 4095).astype(np.uint16), study_uid=study_uid,
                    series_uid=generate_uid(), accession=f"E2E{index:03d}")
    path = directory / f"{index:03d}.dcm"
    if syntax is None:
        ds.save_as(path, enforce_file_format=True)
    else:
        ENCODERS[syntax][1](ds, path)
    return study_uid, path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass(frozen=True)
class Result:
    """One stream through one stack."""

    decode_ahead: bool
    latencies: list[float]
    scoring_s: list[float]
    throughput: float

    def line(self) -> str:
        return (f"decode-ahead {'on ' if self.decode_ahead else 'off'}: C-STORE ack -> SR in "
                f"Orthanc p50 {percentile(self.latencies, 50):.1f} s, p95 "
                f"{percentile(self.latencies, 95):.1f} s, max {max(self.latencies):.1f} s; "
                f"scoring per image {statistics.mean(self.scoring_s):.2f} s (claim to "
                f"recorded); throughput {self.throughput:.2f} img/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between studies")
    parser.add_argument("--quiet", type=float, default=2.0, help="TRIAGE_STUDY_QUIET_S")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--input", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0,
                        help="TRIAGE_TORCH_THREADS (0: the worker's default)")
    parser.add_argument("--size", default="2500x2000")
    parser.add_argument("--syntax", choices=sorted(SYNTAXES), default="mixed")
    parser.add_argument("--decode-ahead", default="on",
                        help="on, off, or on,off to compare (a fresh stack each)")
    args = parser.parse_args()
    rows, columns = (int(v) for v in args.size.split("x"))
    modes = [m.strip() == "on" for m in args.decode_ahead.split(",") if m.strip()]
    print(describe_machine(torch_facts=False))
    with tempfile.TemporaryDirectory(prefix="cxr-bench-e2e-") as tmp:
        root = Path(tmp)
        model = build_ensemble(root / "model", folds=args.folds, input_size=args.input,
                               threshold=0.5, label="e2e benchmark (random weights)")
        studies = make_studies(root / "studies", args, rows, columns)
        warmup = make_studies(root / "warmup", args, rows, columns,
                              count=len(SYNTAXES[args.syntax]), first=1000)
        print(f"{len(studies)} studies ({args.syntax}), one every {args.interval:.1f} s, "
              f"{args.folds}-fold ResNet-50 at {args.input} px, torch threads "
              f"{args.threads or 'worker default'}, quiet time {args.quiet:.1f} s")
        results = [run_stack(root / f"run-{index}", model, warmup, studies, args, ahead)
                   for index, ahead in enumerate(modes)]
    for result in results:
        print(result.line())
    if len(results) == 2 and results[0].decode_ahead != results[1].decode_ahead:
        on, off = sorted(results, key=lambda r: not r.decode_ahead)
        print(f"decode-ahead on / off: throughput {on.throughput / off.throughput:.2f}x, "
              f"p95 latency {percentile(on.latencies, 95) / percentile(off.latencies, 95):.2f}x")
    return 0


def make_studies(directory: Path, args: argparse.Namespace, rows: int, columns: int,
                 count: int | None = None, first: int = 0) -> list[tuple[str, Path]]:
    directory.mkdir(parents=True)
    syntaxes = SYNTAXES[args.syntax]
    return [make_study(directory, first + i, rows, columns, syntaxes[i % len(syntaxes)])
            for i in range(args.studies if count is None else count)]


def run_stack(root: Path, model: Path, warmup: list[tuple[str, Path]],
              studies: list[tuple[str, Path]], args: argparse.Namespace,
              decode_ahead: bool) -> Result:
    """A fresh redis, Orthanc, node and workers; a warm-up study per syntax, reported and
    delivered before the stream (the ensemble loads once per worker, not per study); the
    stream; the figures (warm-up excluded)."""
    redis = RedisServer(root / "redis").start()
    pacs = OrthancServer(root / "orthanc").start()
    db_url = f"sqlite:///{root / 'triage.db'}"
    node = NodeProcess(root / "node", db_url, redis.url).start()
    env = {"TRIAGE_STUDY_QUIET_S": str(args.quiet),
           "TRIAGE_DECODE_AHEAD": "1" if decode_ahead else "0"}
    workers = [_worker(root, queue, db_url, redis.url, model, node.storage, pacs, env,
                       args.threads) for queue in ("score", "deliver")]
    try:
        for worker in workers:
            worker.start()
        send_at_rate(node.port, warmup, 0.0)
        wait_for_deliveries(db_url, len(warmup), timeout=600)
        plan = [line for line in workers[0].log().splitlines()
                if "inference (TRIAGE_INFERENCE_PRECISION" in line or "torch threads" in line]
        print("\n".join(f"score worker: {line.split(': ', 1)[-1]}" for line in plan[:2]))
        warm_ids = {row[0] for row in query(db_url, "SELECT id FROM score")}
        acked = send_at_rate(node.port, studies, args.interval)
        sent = wait_for_deliveries(db_url, len(warmup) + len(acked), timeout=1200)
    finally:
        for worker in workers:
            worker.stop()
        node.stop()
        pacs.stop()
        redis.kill()
    scores = [row for row in query(db_url, "SELECT id, latency_ms, created_at FROM score")
              if row[0] not in warm_ids]
    scoring = [float(row[1]) / 1000 for row in scores]
    last = max(_epoch(row[2]) for row in scores)
    return Result(decode_ahead, [sent[uid] - acked[uid] for uid in acked], scoring,
                  len(scoring) / (last - min(acked.values())))


def _worker(root: Path, queue: str, db_url: str, broker_url: str, model: Path,
            storage: Path, pacs: OrthancServer, env: dict[str, str],
            threads: int) -> WorkerProcess:
    """A worker on one queue, as ``cxr-triage up`` starts them (score: one process)."""
    worker = WorkerProcess(root / queue, db_url=db_url, broker_url=broker_url,
                           model_dir=model, storage_dir=storage,
                           destinations=f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", env=env)
    if threads:
        worker.env["TRIAGE_TORCH_THREADS"] = str(threads)
    else:
        worker.env.pop("TRIAGE_TORCH_THREADS", None)
    worker.command = [*worker.command[:-2], "--queues", queue, "--concurrency",
                      "1" if queue == "score" else "2"]
    return worker


def send_at_rate(port: int, studies: list[tuple[str, Path]], interval: float) -> dict[str, float]:
    """study UID -> wall-clock time (epoch s) its C-STORE was acknowledged."""
    acked: dict[str, float] = {}
    start = time.time()
    for index, (study_uid, path) in enumerate(studies):
        time.sleep(max(0.0, start + index * interval - time.time()))
        if storescu(port, [path]).status_of(path) != 0:
            raise RuntimeError(f"study {index} was not stored")
        acked[study_uid] = time.time()
    return acked


def wait_for_deliveries(db_url: str, count: int, timeout: float) -> dict[str, float]:
    """study UID -> time Orthanc accepted its first SR."""
    deadline = time.monotonic() + timeout
    sql = ("SELECT s.study_instance_uid, MIN(d.sent_at) FROM delivery d JOIN report r ON "
           "r.id = d.report_id JOIN study s ON s.id = r.study_id WHERE d.state = 'sent' "
           "GROUP BY s.study_instance_uid")
    while time.monotonic() < deadline:
        rows = query(db_url, sql)
        if len(rows) >= count:
            return {str(uid): _epoch(sent) for uid, sent in rows}
        time.sleep(0.5)
    raise TimeoutError("not every study's SR reached Orthanc")


def _epoch(value: object) -> float:
    stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


if __name__ == "__main__":
    sys.exit(main())
