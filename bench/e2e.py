"""End-to-end latency: from the node's C-STORE acknowledgement to the SR stored in Orthanc.

Starts a private redis-server, Orthanc, the node and one worker (real processes), sends N
single-image studies with storescu at a fixed rate, and reads when each study's SR was accepted
by Orthanc (the delivery's ``sent_at``). Prints p50 and p95, with the configured quiet time
(a study is reported only after it has been quiet that long) and the mean scoring latency.

    .venv/bin/python bench/e2e.py --studies 10 --interval 6 --quiet 2 --folds 10 --input 224
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxr_triage.synthetic import cr_dataset, radiograph
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query


def make_study(directory: Path, index: int, rows: int, columns: int) -> tuple[str, Path]:
    rng = np.random.default_rng(index)
    pixels = radiograph(rng, covid=index % 2 == 0, size=max(rows, columns))[:rows, :columns]
    study_uid = generate_uid()
    ds = cr_dataset((pixels * 4095).astype(np.uint16), study_uid=study_uid,
                    series_uid=generate_uid(), accession=f"E2E{index:03d}")
    path = directory / f"{index:03d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return study_uid, path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between studies")
    parser.add_argument("--quiet", type=float, default=2.0, help="TRIAGE_STUDY_QUIET_S")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--input", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="TRIAGE_TORCH_THREADS")
    parser.add_argument("--size", default="2500x2000")
    args = parser.parse_args()
    rows, columns = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="cxr-bench-e2e-") as tmp:
        root = Path(tmp)
        model = build_ensemble(root / "model", folds=args.folds, input_size=args.input,
                               threshold=0.5, label="e2e benchmark (random weights)")
        redis = RedisServer(root / "redis").start()
        pacs = OrthancServer(root / "orthanc").start()
        db_url = f"sqlite:///{root / 'triage.db'}"
        node = NodeProcess(root / "node", db_url, redis.url).start()
        worker = WorkerProcess(
            root / "worker", db_url=db_url, broker_url=redis.url, model_dir=model,
            storage_dir=node.storage, destinations=f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
            env={"TRIAGE_STUDY_QUIET_S": str(args.quiet),
                 "TRIAGE_TORCH_THREADS": str(args.threads)},
        ).start()
        try:
            acked = send_at_rate(node.port, root / "studies", args, rows, columns)
            sent = wait_for_deliveries(db_url, len(acked), timeout=600)
        finally:
            worker.stop()
            node.stop()
            pacs.stop()
            redis.kill()
        report(acked, sent, db_url, args)
    return 0


def send_at_rate(port: int, directory: Path, args: argparse.Namespace, rows: int,
                 columns: int) -> dict[str, float]:
    """study UID -> wall-clock time (epoch s) its C-STORE was acknowledged."""
    directory.mkdir(parents=True)
    studies = [make_study(directory, i, rows, columns) for i in range(args.studies)]
    acked: dict[str, float] = {}
    start = time.time()
    for index, (study_uid, path) in enumerate(studies):
        time.sleep(max(0.0, start + index * args.interval - time.time()))
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


def report(acked: dict[str, float], sent: dict[str, float], db_url: str,
           args: argparse.Namespace) -> None:
    latencies = [sent[uid] - acked[uid] for uid in acked]
    scoring = [float(row[0]) for row in query(db_url, "SELECT latency_ms FROM score")]
    print(f"{len(latencies)} studies, one every {args.interval:.1f} s, {args.folds}-fold "
          f"ResNet-50 at {args.input} px, {args.threads} torch thread(s), quiet time "
          f"{args.quiet:.1f} s")
    print(f"C-STORE ack -> SR stored in Orthanc: p50 {percentile(latencies, 50):.1f} s, "
          f"p95 {percentile(latencies, 95):.1f} s, max {max(latencies):.1f} s")
    print(f"scoring latency per image (claim to score recorded): mean "
          f"{statistics.mean(scoring) / 1000:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
