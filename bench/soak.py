"""Soak: mixed traffic, random SIGKILLs and PACS outages; every acknowledged image accounted for.

Starts a private redis-server, Orthanc (the PACS), two nodes sharing one database and storage
(one plain TCP, one TLS) and one worker, all real processes. For ``--duration`` seconds it sends
valid studies (some with a lateral view the rules skip), duplicate resends and malformed files
over both nodes, while a chaos loop SIGKILLs the worker or a node and takes the PACS down for a
while. Then it restores everything, lets the pipeline drain, and checks every instance a node
acknowledged (C-STORE Success): it must be scored with its study reported and delivered, or
recorded with the reason it was not (skipped, failed). Anything else is lost.

    .venv/bin/python bench/soak.py --duration 3600            # the recorded hour
    .venv/bin/python bench/soak.py --duration 300 --db postgresql
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxr_triage.synthetic import cr_dataset, radiograph
from tests.support.certs import Pki, make_pki
from tests.support.dcmtk import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.support.services import fresh_postgres_database
from tests.worker.conftest import build_ensemble
from tests.worker.processes import WorkerProcess, query

SETTLED = ("scored", "skipped", "failed")


@dataclass
class Ledger:
    """What was sent and what the nodes acknowledged (SOP Instance UID -> kind)."""

    sent: Counter[str] = field(default_factory=Counter)
    acknowledged: dict[str, str] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Stack:
    """The processes under test, each restartable."""

    def __init__(self, root: Path, db_url: str, pki: Pki, args: argparse.Namespace) -> None:
        self.redis = RedisServer(root / "redis").start()
        self.pacs = OrthancServer(root / "orthanc").start()
        model = build_ensemble(root / "model", folds=args.folds, input_size=args.input,
                               threshold=0.5, label="soak benchmark (random weights)")
        common = {"TRIAGE_SCORE_LEASE_S": str(args.lease), "TRIAGE_STUDY_QUIET_S": "2"}
        self.plain = NodeProcess(root / "node-plain", db_url, self.redis.url, env=common)
        storage = {"TRIAGE_STORAGE_DIR": str(self.plain.storage)}
        tls = {"TRIAGE_TLS_CERT": str(pki.server_cert), "TRIAGE_TLS_KEY": str(pki.server_key)}
        self.tls = NodeProcess(root / "node-tls", db_url, self.redis.url,
                               env={**common, **storage, **tls})
        self.tls.storage = self.plain.storage
        self.worker = WorkerProcess(
            root / "worker", db_url=db_url, broker_url=self.redis.url, model_dir=model,
            storage_dir=self.plain.storage,
            destinations=f"{self.pacs.aet}@127.0.0.1:{self.pacs.dicom_port}",
            env={**common, "TRIAGE_DELIVERY_BACKOFF_S": "2", "TRIAGE_DELIVERY_BACKOFF_MAX_S": "20",
                 "TRIAGE_DELIVERY_RETRY_HORIZON_S": "86400"})
        self.plain.start()
        self.tls.start()
        self.worker.start()

    def stop(self) -> None:
        for stop in (self.worker.stop, self.tls.stop, self.plain.stop, self.pacs.stop,
                     self.redis.kill):
            with contextlib.suppress(Exception):
                stop()


def make_files(directory: Path, rng: np.random.Generator, index: int,
               lateral: bool) -> list[tuple[str, Path]]:
    """One synthetic study of one or two CR images: (SOP Instance UID, file)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(1, 1 + int(rng.integers(1, 3))):
        pixels = (radiograph(rng, covid=bool(index % 2), size=384) * 4095).astype(np.uint16)
        ds = cr_dataset(pixels, study_uid=study_uid, series_uid=series_uid,
                        accession=f"SOAK{index:05d}", view="LL" if lateral else "PA",
                        number=number)
        path = directory / f"{index:05d}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append((str(ds.SOPInstanceUID), path))
    return files


def malformed(directory: Path, source: Path, rng: np.random.Generator, index: int) -> Path:
    """A truncated or byte-flipped copy of a valid file."""
    data = bytearray(source.read_bytes())
    if rng.random() < 0.5:
        data = data[: int(rng.integers(200, len(data) - 1))]
    else:
        for position in rng.integers(132, len(data), size=16):
            data[int(position)] ^= 0xFF
    path = directory / f"bad-{index:05d}.dcm"
    path.write_bytes(bytes(data))
    return path


def sop_uid_of(path: Path) -> str:
    """The SOP Instance UID a node would have read from ``path``, or "" when unreadable."""
    try:
        return str(dcmread(path, force=True, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # a malformed file may have none
        return ""


def traffic(stack: Stack, pki: Pki, root: Path, ledger: Ledger, deadline: float,
            seed: int, interval: float) -> None:
    """Send studies, duplicates and malformed files until ``deadline``."""
    rng = np.random.default_rng(seed)
    directory = root / "studies"
    directory.mkdir()
    sent: list[tuple[str, Path]] = []
    tls_args = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]
    index = 0
    while time.monotonic() < deadline:
        index += 1
        roll = rng.random()
        if roll < 0.15 and sent:
            kind, files = "duplicate", [sent[int(rng.integers(len(sent)))]]
        elif roll < 0.30 and sent:
            bad = malformed(directory, sent[int(rng.integers(len(sent)))][1], rng, index)
            kind, files = "malformed", [(sop_uid_of(bad), bad)]
        else:
            lateral = rng.random() < 0.1
            kind = "lateral" if lateral else "valid"
            files = make_files(directory, rng, index, lateral)
            sent.extend(files)
        use_tls = rng.random() < 0.5
        node = stack.tls if use_tls else stack.plain
        try:
            run = storescu(node.port, [p for _, p in files], extra=tls_args if use_tls else (),
                           timeout=120)
        except Exception:  # a node killed mid-association: nothing acknowledged
            run = None
        with ledger.lock:
            for uid, path in files:
                ledger.sent[kind] += 1
                status = None if run is None else run.status_of(path)
                if status == 0:
                    ledger.acknowledged[uid or f"unreadable:{path.name}"] = kind
                else:
                    ledger.refused[kind] += 1
        time.sleep(interval)


def chaos(stack: Stack, ledger: Ledger, deadline: float, seed: int, every: float) -> None:
    """SIGKILL the worker or a node, or take the PACS down, every ``every`` s on average."""
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 1.5) * every)
        if time.monotonic() >= deadline:
            return
        event = rng.choice(["worker", "worker", "node-plain", "node-tls", "pacs"])
        ledger.events[event] += 1
        if event == "worker":
            stack.worker.kill()
            time.sleep(rng.uniform(1, 8))
            stack.worker.start()
        elif event.startswith("node"):
            node = stack.plain if event == "node-plain" else stack.tls
            node.kill()
            time.sleep(rng.uniform(1, 5))
            node.start()
        else:
            stack.pacs.stop()
            time.sleep(rng.uniform(20, 90))
            stack.pacs.start()


def audit(db_url: str, ledger: Ledger) -> dict[str, int]:
    """Count every acknowledged instance by where it ended; ``lost`` must be 0."""
    instances = {str(r[0]): (str(r[1]), r[2], int(str(r[3]))) for r in query(
        db_url, "SELECT sop_instance_uid, status, status_reason, study_id FROM instance")}
    reported = {int(str(r[0])) for r in query(db_url, "SELECT DISTINCT study_id FROM report")}
    undelivered = {int(str(r[0])) for r in query(
        db_url, "SELECT DISTINCT r.study_id FROM delivery d JOIN report r ON r.id = d.report_id "
                "WHERE d.state NOT IN ('sent', 'shadow', 'withheld')")}
    counts: Counter[str] = Counter()
    for uid in ledger.acknowledged:
        row = instances.get(uid)
        if row is None:
            counts["lost: acknowledged, no database row"] += 1
            continue
        status, reason, study_id = row
        if status == "scored" and study_id in reported and study_id not in undelivered:
            counts["scored, reported and delivered"] += 1
        elif status in ("skipped", "failed") and reason:
            counts[f"{status}, with a reason"] += 1
        elif status == "scored" and study_id not in reported:
            counts["lost: scored, never reported"] += 1
        elif status == "scored":
            counts["lost: reported, not delivered"] += 1
        else:
            counts[f"lost: left {status}"] += 1
    counts["lost"] = sum(v for k, v in counts.items() if k.startswith("lost:"))
    return dict(counts)


def drained(db_url: str, ledger: Ledger) -> bool:
    counts = audit(db_url, ledger)
    return counts["lost"] == 0


@contextlib.contextmanager
def database(kind: str, root: Path) -> Iterator[str]:
    if kind == "postgresql":
        with fresh_postgres_database("cxr_soak") as url:
            yield url
    else:
        yield f"sqlite:///{root / 'triage.db'}"


def cpu_model() -> str:
    """The machine line every figure carries (bench/machine.py: CPU, flags, load)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.machine import describe_machine

    return describe_machine(torch_facts=False)

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of traffic")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sends")
    parser.add_argument("--chaos-every", type=float, default=90.0, help="mean s between faults")
    parser.add_argument("--drain", type=float, default=900.0, help="max s to settle afterwards")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--lease", type=float, default=30.0, help="TRIAGE_SCORE_LEASE_S")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(f"{cpu_model()}; database {args.db}; {args.duration:.0f} s of traffic, a fault "
          f"every ~{args.chaos_every:.0f} s; {args.folds}-fold ensemble at {args.input} px")
    ledger = Ledger()
    with tempfile.TemporaryDirectory(prefix="cxr-soak-") as tmp:
        root = Path(tmp)
        pki = make_pki(root / "pki")
        with database(args.db, root) as db_url:
            stack = Stack(root, db_url, pki, args)
            try:
                deadline = time.monotonic() + args.duration
                threads = [
                    threading.Thread(target=traffic, args=(stack, pki, root, ledger, deadline,
                                                           args.seed, args.interval)),
                    threading.Thread(target=chaos, args=(stack, ledger, deadline, args.seed,
                                                         args.chaos_every)),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                settle = time.monotonic() + args.drain
                while time.monotonic() < settle and not drained(db_url, ledger):
                    time.sleep(5)
                counts = audit(db_url, ledger)
            finally:
                stack.stop()
    print(f"sent: {dict(ledger.sent)}")
    print(f"refused by the node (not acknowledged): {dict(ledger.refused)}")
    print(f"faults injected: {dict(ledger.events)}")
    print(f"acknowledged: {len(ledger.acknowledged)}")
    for name, value in sorted(counts.items()):
        print(f"  {name}: {value}")
    print("RESULT: 0 lost" if counts["lost"] == 0 else f"RESULT: {counts['lost']} LOST")
    return 0 if counts["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
