"""Ingest benchmark: our node (durable store + database) against dcmtk's storescp, side by side.

The same set of large CR files is sent with dcmtk's storescu over one association to each
receiver in turn (alternating rounds), and instances/s, MB/s and the ratio ours/storescp are
printed. Goal: a ratio of 0.8 or better.

    .venv/bin/python bench/ingest.py --files 100 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxr_triage.synthetic import cr_dataset
from tests.support.node import migrate
from tests.support.servers import free_port, wait_for_port


def make_files(directory: Path, count: int, rows: int, columns: int) -> list[Path]:
    """``count`` CR images of rows x columns 16-bit pixels (about 10 MB at 2500 x 2000)."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(0).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    paths = []
    for index in range(count):
        ds = cr_dataset(pixels, study_uid=study, series_uid=series, accession="BENCH",
                        number=index + 1)
        path = directory / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, files: list[Path], called_ae: str) -> float:
    """Seconds storescu needs to send every file over one association (fails on any error)."""
    start = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port),
         *map(str, files)],
        check=True, capture_output=True,
    )
    return time.perf_counter() - start


def run_storescp(files: list[Path], workdir: Path) -> float:
    out = workdir / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        seconds = send(port, files, "STORESCP")
    finally:
        proc.terminate()
        proc.wait()
    assert len(list(out.iterdir())) == len(files), "storescp did not store every file"
    return seconds


@contextmanager
def fresh_database(server_url: str | None, root: Path) -> Iterator[str]:
    """SQLite in ``root``, or a new database on the PostgreSQL server of ``server_url``."""
    if server_url is None:
        yield f"sqlite:///{root / 'triage.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"cxr_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_node(files: list[Path], workdir: Path, db_url: str | None, broker_url: str) -> float:
    root = workdir / "node"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with fresh_database(db_url, root) as url:
        return _run_node(files, root, url, broker_url)


def _run_node(files: list[Path], root: Path, db_url: str, broker_url: str) -> float:
    port = free_port()
    env = {
        **os.environ,
        "TRIAGE_VAR_DIR": str(root / "var"),
        "TRIAGE_STORAGE_DIR": str(root / "storage"),
        "TRIAGE_DB_URL": db_url,
        "TRIAGE_BROKER_URL": broker_url,
        "TRIAGE_PORT": str(port),
        "TRIAGE_ALLOWED_AETS": "STORESCU",
        "TRIAGE_MIN_FREE_BYTES": "0",
    }
    migrate(db_url)  # the node only checks that the schema is current
    log = (root / "node.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cxr_triage", "node"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_for_port(port, timeout=60)
        seconds = send(port, files, "CXR_TRIAGE")
    finally:
        proc.terminate()
        proc.wait()
    stored = [p for p in (root / "storage").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == len(files), "the node did not store every file"
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-url", help="PostgreSQL server (any database on it) for the node; "
                        "a fresh database is made per round (default: SQLite)")
    parser.add_argument("--broker-url", default="filesystem://")
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temp dir)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-bench-ingest-"))
    files = make_files(workdir / "files", args.files, args.rows, args.columns)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} files, {megabytes / len(files):.1f} MB each, {megabytes:.0f} MB in all")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    ours: list[float] = []
    theirs: list[float] = []
    for round_index in range(args.rounds):
        theirs.append(run_storescp(files, workdir))
        ours.append(run_node(files, workdir, args.pg_url, args.broker_url))
        print(f"round {round_index + 1}: storescp {theirs[-1]:.2f} s, node {ours[-1]:.2f} s")
    rows = [("dcmtk storescp", statistics.median(theirs)),
            ("cxr-triage node (fsync + DB)", statistics.median(ours))]
    print(f"\n{'receiver':32} {'inst/s':>8} {'MB/s':>8}")
    for name, seconds in rows:
        print(f"{name:32} {len(files) / seconds:8.1f} {megabytes / seconds:8.1f}")
    ratio = statistics.median(theirs) / statistics.median(ours)
    print(f"\nratio ours/storescp (instances/s, median of {args.rounds} rounds): {ratio:.2f}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
