"""Worklist latency with 100 000 studies: the JSON API and the HTML page, SQLite and PostgreSQL.

Fills a fresh database per backend with N studies (one image, score, report and delivery
each; a third suspected, a tenth indeterminate, the rest not suspected), then times requests
through the real app (FastAPI TestClient: routing, auth, audit write, query, rendering;
no network). Prints p50/p95 per backend side by side. Goal: p95 <= 150 ms for the first page.

    .venv/bin/python bench/worklist.py --studies 100000 --requests 40
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastapi.testclient import TestClient

from db.migrate import upgrade
from db.models import Delivery, Instance, Report, Role, Score, Study, utcnow
from db.session import make_engine, make_session_factory
from tests.support.services import fresh_postgres_database
from tests.web.conftest import login, web_settings
from web import accounts
from web.app import create_app

CHUNK = 5000
CASES = (("api first page", "/api/worklist?page_size=50"),
         ("page first page", "/worklist"),
         ("api suspected only", "/api/worklist?decision=suspected&page_size=50"),
         ("api page 1000", "/api/worklist?page=1000&page_size=50"))


def cpu_model() -> str:
    """The machine line every figure carries (bench/machine.py: CPU, flags, load)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.machine import describe_machine

    return describe_machine(torch_facts=False)

def _decision(i: int) -> str:
    return "suspected" if i % 3 == 0 else "indeterminate" if i % 10 == 1 else "not_suspected"


def fill(url: str, studies: int) -> None:
    """``studies`` studies with one image, score, report and delivery each (bulk inserts)."""
    engine = make_engine(url)
    upgrade(engine)
    start = utcnow() - dt.timedelta(days=30)
    with engine.begin() as connection:
        for first in range(0, studies, CHUNK):
            ids = range(first + 1, min(first + CHUNK, studies) + 1)
            when = [start + dt.timedelta(seconds=20 * i) for i in ids]
            connection.execute(insert(Study), [dict(
                id=i, study_instance_uid=f"1.2.826.0.1.{i}", accession_number=f"A{i}",
                patient_id=f"P{i}", patient_name=f"NAME^{i}", study_date="20261101",
                first_received_at=w, last_received_at=w, report_generation=0,
                report_attempts=0) for i, w in zip(ids, when, strict=True)])
            connection.execute(insert(Instance), [dict(
                id=i, sop_instance_uid=f"1.2.826.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                study_id=i, series_instance_uid=f"1.2.826.2.{i}", calling_ae="MODALITY",
                received_at=w, updated_at=w, file_path="/dev/null", size_bytes=1,
                transfer_syntax_uid="1.2.840.10008.1.2.1", content_sha256="0" * 64,
                modality="CR", body_part_examined="CHEST", status="scored", receive_count=1,
                enqueue_count=1) for i, w in zip(ids, when, strict=True)])
            probability = {i: (i * 7919 % 1000) / 1000 for i in ids}
            connection.execute(insert(Score), [dict(
                id=i, instance_id=i, model_version="bench", content_sha256="0" * 64,
                probability_mean=probability[i], probability_std=0.05,
                fold_probabilities=[probability[i]] * 10, fold_votes=5, threshold=0.5,
                decision=_decision(i), latency_ms=10.0, batch_size=1, device="cpu",
                worker_host="bench", created_at=w) for i, w in zip(ids, when, strict=True)])
            connection.execute(insert(Report), [dict(
                id=i, study_id=i, model_version="bench", revision=1, decision=_decision(i),
                priority="HIGH" if _decision(i) == "suspected" else "ROUTINE",
                probability_mean=probability[i], probability_std=0.05, source_instance_id=i,
                scored_instance_count=1, sr_study_instance_uid=f"1.2.826.0.1.{i}",
                sr_series_instance_uid=f"1.2.826.3.{i}", sr_sop_instance_uid=f"1.2.826.4.{i}",
                file_path="/dev/null", worker_host="bench", created_at=w)
                for i, w in zip(ids, when, strict=True)])
            connection.execute(insert(Delivery), [dict(
                id=i, report_id=i, destination="PACS@127.0.0.1:104", shadow=False,
                state="sent", attempts=1, created_at=w, updated_at=w, sent_at=w)
                for i, w in zip(ids, when, strict=True)])
    if url.startswith("postgresql"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    with make_session_factory(engine).begin() as session:
        accounts.add_user(session, "bench", "bench password", Role.RADIOLOGIST, True)
    engine.dispose()


def measure(url: str, folder: Path, requests: int) -> dict[str, tuple[float, float]]:
    """p50 and p95 in ms of each case (after two warm-up requests)."""
    app = create_app(web_settings(url, folder))
    results = {}
    with TestClient(app) as client:
        assert login(client, "bench", "bench password") == 303
        for name, path in CASES:
            timings = []
            for index in range(requests + 2):
                begin = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - begin) * 1000.0
                assert response.status_code == 200, response.text[:300]
                if index >= 2:
                    timings.append(elapsed)
            timings.sort()
            results[name] = (statistics.median(timings),
                             timings[max(0, round(0.95 * len(timings)) - 1)])
    return results


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "postgresql":
        with fresh_postgres_database("cxr_worklist_bench") as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'bench.db'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(cpu_model())
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for kind in args.db or ["sqlite", "postgresql"]:
        with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
            begin = time.perf_counter()
            fill(url, args.studies)
            print(f"{kind}: {args.studies} studies inserted in {time.perf_counter() - begin:.0f} s")
            table[kind] = measure(url, Path(tmp), args.requests)
    kinds = list(table)
    print(f"\n{'case':22}" + "".join(f"{k + ' p50/p95 ms':>26}" for k in kinds))
    for name, _path in CASES:
        cells = "".join(f"{table[k][name][0]:>14.1f} /{table[k][name][1]:>8.1f}" for k in kinds)
        print(f"{name:22}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
