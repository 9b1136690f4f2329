"""Ingest benchmark: our node (durable store + database) against dcmtk's storescp, side by side.

The same set of large CR files is sent with dcmtk's storescu over one association to each
receiver in turn (alternating rounds), and instances/s, MB/s and the ratio ours/storescp are
printed. Goal (issue 16): a ratio of 1.2 or better with fsync and the commit before Success.
``--associations N`` splits the files over N storescu processes sending at once (each receiver
gets the same split). Then one more round runs the node inside this process with timers around
each step and prints where the time goes per instance (:mod:`bench.ingest_profile`).

    .venv/bin/python bench/ingest.py --files 100 --rounds 2
"""

from __future__ import annotations

import argparse
import os
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
from bench.machine import describe_machine
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


def send(port: int, files: list[Path], called_ae: str, associations: int = 1) -> float:
    """Seconds storescu needs to send every file, over ``associations`` associations at once
    (one storescu process each; fails on any error)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(
        ["storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port),
         *map(str, files[index::associations])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) for index in range(associations)]
    errors = [proc.communicate()[1] for proc in procs]
    seconds = time.perf_counter() - start
    failed = [err.decode(errors="replace") for proc, err in zip(procs, errors, strict=True)
              if proc.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0][-2000:]}")
    return seconds


def run_storescp(files: list[Path], workdir: Path, associations: int = 1) -> float:
    out = workdir / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        seconds = send(port, files, "STORESCP", associations)
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


def node_env(root: Path, db_url: str, broker_url: str, port: int) -> dict[str, str]:
    return {
        "TRIAGE_VAR_DIR": str(root / "var"),
        "TRIAGE_STORAGE_DIR": str(root / "storage"),
        "TRIAGE_DB_URL": db_url,
        "TRIAGE_BROKER_URL": broker_url,
        "TRIAGE_PORT": str(port),
        "TRIAGE_ALLOWED_AETS": "STORESCU",
        "TRIAGE_MIN_FREE_BYTES": "0",
    }


def run_node(files: list[Path], workdir: Path, db_url: str | None, broker_url: str,
             associations: int = 1) -> float:
    root = workdir / "node"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with fresh_database(db_url, root) as url:
        return _run_node(files, root, url, broker_url, associations)


def _run_node(files: list[Path], root: Path, db_url: str, broker_url: str,
              associations: int) -> float:
    port = free_port()
    env = {**os.environ, **node_env(root, db_url, broker_url, port)}
    migrate(db_url)  # the node only checks that the schema is current
    log = (root / "node.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cxr_triage", "node"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_for_port(port, timeout=60)
        seconds = send(port, files, "CXR_TRIAGE", associations)
    finally:
        proc.terminate()
        proc.wait()
    _check_stored(root, files)
    return seconds


def _check_stored(root: Path, files: list[Path]) -> None:
    stored = [p for p in (root / "storage").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == len(files), "the node did not store every file"


def profile(files: list[Path], workdir: Path, db_url: str | None, broker_url: str,
            associations: int) -> list[str]:
    """One more round with the node in this process and a timer around each step."""
    from bench.ingest_profile import breakdown, profile_node

    root = workdir / "profile"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with fresh_database(db_url, root) as url:
        migrate(url)
        env = node_env(root, url, broker_url, 0)
        seconds, clock = profile_node(
            env, lambda port: send(port, files, "CXR_TRIAGE", associations))
    _check_stored(root, files)
    lines = [f"profiled round: {len(files) / seconds:.1f} inst/s (timers add a little)"]
    return lines + breakdown(clock, seconds, len(files), associations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-url", help="PostgreSQL server (any database on it) for the node; "
                        "a fresh database is made per round (default: SQLite)")
    parser.add_argument("--broker-url", default="filesystem://")
    parser.add_argument("--associations", type=int, default=1,
                        help="storescu processes sending at once (the files split among them)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the per-step breakdown round")
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temp dir)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-bench-ingest-"))
    files = make_files(workdir / "files", args.files, args.rows, args.columns)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} files, {megabytes / len(files):.1f} MB each, {megabytes:.0f} MB in all")
    print(describe_machine(torch_facts=False))
    print(f"database: {'PostgreSQL' if args.pg_url else 'SQLite'}, broker {args.broker_url}, "
          f"{args.associations} association(s) at once")
    ours: list[float] = []
    theirs: list[float] = []
    for round_index in range(args.rounds):
        theirs.append(run_storescp(files, workdir, args.associations))
        ours.append(run_node(files, workdir, args.pg_url, args.broker_url, args.associations))
        print(f"round {round_index + 1}: storescp {theirs[-1]:.2f} s, node {ours[-1]:.2f} s")
    rows = [("dcmtk storescp", statistics.median(theirs)),
            ("cxr-triage node (fsync + DB)", statistics.median(ours))]
    print(f"\n{'receiver':32} {'inst/s':>8} {'MB/s':>8}")
    for name, seconds in rows:
        print(f"{name:32} {len(files) / seconds:8.1f} {megabytes / seconds:8.1f}")
    ratio = statistics.median(theirs) / statistics.median(ours)
    ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
    print(f"\nratio ours/storescp (instances/s, median of {args.rounds} rounds): {ratio:.2f} "
          f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    if not args.no_profile:
        print()
        print("\n".join(profile(files, workdir, args.pg_url, args.broker_url,
                               args.associations)))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
