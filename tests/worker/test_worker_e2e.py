"""End to end with real components: storescu -> node -> Redis -> worker -> Orthanc.

Every test runs a private redis-server, the node and ``cxr-triage worker`` as subprocesses,
dcmtk's storescu as the modality and Orthanc as the PACS.
"""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom import dcmread
from pydicom.dataset import Dataset

from common.queues import QUEUE_SCORE, TASK_SCORE_INSTANCE, BrokerSettings, make_celery
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.hooked_cli import HOLD_AFTER_CLAIM_S
from tests.support.node import NodeProcess
from tests.support.orthanc import OrthancServer
from tests.support.servers import RedisServer
from tests.worker.processes import WorkerProcess, query, wait_until

pytestmark = pytest.mark.integration
CALLING_AE = "CXR_TRIAGE"


class Stack:
    """Redis, node, Orthanc and a worker for one test."""

    def __init__(self, tmp_path: Path, db_url: str, model_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.redis = RedisServer(tmp_path / "redis").start()
        self.node = NodeProcess(tmp_path / "node", db_url, self.redis.url).start()
        self.orthanc = OrthancServer(tmp_path / "orthanc", allowed_callers=(CALLING_AE,)).start()
        self.destinations = (f"ORTHANC@127.0.0.1:{self.orthanc.dicom_port},"
                             "SHADOW@127.0.0.1:1;shadow")
        self.model_dir = model_dir
        self.workers: list[WorkerProcess] = []

    def worker(self, hooks: dict[str, str] | None = None, **env: str) -> WorkerProcess:
        process = WorkerProcess(
            self.tmp_path / f"worker{len(self.workers)}", db_url=self.db_url,
            broker_url=self.redis.url, model_dir=self.model_dir, storage_dir=self.node.storage,
            destinations=self.destinations, env={"TRIAGE_CALLING_AE": CALLING_AE, **env},
            hooks=hooks)
        self.workers.append(process)
        return process.start()

    def logs(self) -> str:
        return "\n".join([self.node.log()[-3000:], *(w.log()[-6000:] for w in self.workers)])

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.db_url, sql)

    def delivery_states(self) -> dict[str, str]:
        return {str(d): str(s) for d, s in self.rows("SELECT destination, state FROM delivery")}

    def broker_idle(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.redis.port)
        try:
            return bool(client.llen("score") == 0 and client.llen("deliver") == 0
                        and client.hlen("unacked") == 0)
        finally:
            client.close()

    def close(self) -> None:
        for process in self.workers:
            process.stop()
        self.node.stop()
        self.orthanc.stop()
        self.redis.kill()


@pytest.fixture
def stack(tmp_path: Path, db_url: str, tiny_ensemble: Path) -> Iterator[Stack]:
    built = Stack(tmp_path, db_url, tiny_ensemble)
    try:
        yield built
    finally:
        built.close()


def _orthanc_file(orthanc: OrthancServer, sop_uid: str) -> Dataset:
    orthanc_id = orthanc.find_instance(sop_uid)
    assert orthanc_id is not None, f"SR {sop_uid} is not in Orthanc"
    with urllib.request.urlopen(f"{orthanc.rest_url}/instances/{orthanc_id}/file") as response:
        return dcmread(io.BytesIO(response.read()))


def _numeric_values(ds: Dataset) -> list[tuple[str, float]]:
    """(concept meaning, value) of every NUM content item, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "NUM":
            found.append((item.ConceptNameCodeSequence[0].CodeMeaning,
                          float(item.MeasuredValueSequence[0].NumericValue)))
        found += _numeric_values(item)
    return found


def _referenced_uids(sr: Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_a_study_becomes_an_sr_in_the_pacs_once(stack: Stack, tmp_path: Path) -> None:
    files = dicomgen.write_series(tmp_path / "study", 2)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    assert len(storescu(stack.node.port, files).succeeded) == 2
    wait_until(lambda: {r[0] for r in stack.rows("SELECT status FROM instance")} == {"queued"},
               30, "instances queued", stack.logs)
    # The same score task delivered twice more, before any worker runs.
    app = make_celery(BrokerSettings(url=stack.redis.url))
    (first_id,) = stack.rows("SELECT min(id) FROM instance")[0]
    for _ in range(2):
        app.send_task(TASK_SCORE_INSTANCE, args=[first_id], queue=QUEUE_SCORE)

    stack.worker()
    wait_until(lambda: stack.delivery_states() == {
        stack.destinations.split(",")[0]: "sent", "SHADOW@127.0.0.1:1": "shadow"},
        120, "the SR to be delivered", stack.logs)
    wait_until(stack.broker_idle, 60, "the broker to drain", stack.logs)

    assert stack.rows("SELECT count(*) FROM score")[0][0] == 2
    assert {r[0] for r in stack.rows("SELECT status FROM instance")} == {"scored"}
    (report,) = stack.rows("SELECT sr_sop_instance_uid, decision, probability_mean, "
                           "source_instance_id, revision FROM report")
    sop_uid, decision, mean, source_id, revision = report
    assert (decision, revision) == ("suspected", 1)  # threshold 0: every image suspected
    (source_sop, source_mean) = stack.rows(
        f"SELECT i.sop_instance_uid, s.probability_mean FROM instance i JOIN score s "
        f"ON s.instance_id = i.id WHERE i.id = {source_id}")[0]
    assert source_mean == pytest.approx(mean)
    sr = _orthanc_file(stack.orthanc, sop_uid)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study_uid
    assert sr.PatientID == dicomgen.PATIENT_ID and sr.VerificationFlag == "UNVERIFIED"
    assert _referenced_uids(sr) == {str(dcmread(f).SOPInstanceUID) for f in files}
    assert sr.ContentSequence  # a TID 1500 tree
    values = _numeric_values(sr)
    assert ("Probability", pytest.approx(mean, abs=5e-5)) in values  # shown to 4 decimals
    assert ("Threshold Value", 0.0) in values  # the ensemble's threshold (0 here)
    assert str(source_sop) in str(sr)

    listing = subprocess.run([sys.executable, "-m", "cxr_triage", "deliveries"],
                             env=stack.workers[0].env, capture_output=True, text=True)
    assert listing.returncode == 0 and "\tsent\t" in listing.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_pacs_down_then_back_retries_and_delivers(stack: Stack, tmp_path: Path) -> None:
    stack.orthanc.stop()
    stack.worker()
    files = dicomgen.write_series(tmp_path / "study", 1)
    assert len(storescu(stack.node.port, files).succeeded) == 1
    pacs = stack.destinations.split(",")[0]

    def retried() -> bool:
        rows = stack.rows(f"SELECT state, attempts, last_error FROM delivery "
                          f"WHERE destination = '{pacs}'")
        return bool(rows) and rows[0][0] == "retrying" and int(rows[0][1]) >= 2

    wait_until(retried, 90, "delivery retries while the PACS is down", stack.logs)
    (error,) = stack.rows(f"SELECT last_error FROM delivery WHERE destination = '{pacs}'")[0]
    assert "no association" in str(error)
    stack.orthanc.start()
    wait_until(lambda: stack.delivery_states().get(pacs) == "sent", 90,
               "delivery after the PACS is back", stack.logs)
    (sop_uid,) = stack.rows("SELECT sr_sop_instance_uid FROM report")[0]
    assert _orthanc_file(stack.orthanc, str(sop_uid)).Modality == "SR"
    assert len(stack.orthanc.instances()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_killed_mid_task_is_redelivered_and_scores_once(
    stack: Stack, tmp_path: Path
) -> None:
    short = {"TRIAGE_BROKER_VISIBILITY_TIMEOUT_S": "4"}
    doomed = stack.worker(hooks={HOLD_AFTER_CLAIM_S: "120"}, **short)
    files = dicomgen.write_series(tmp_path / "study", 1)
    assert len(storescu(stack.node.port, files).succeeded) == 1
    wait_until(lambda: stack.rows("SELECT status FROM instance")[0][0] == "scoring", 60,
               "the worker to claim the instance", stack.logs)
    doomed.kill()
    assert stack.rows("SELECT count(*) FROM score")[0][0] == 0

    stack.worker(**short)
    pacs = stack.destinations.split(",")[0]
    wait_until(lambda: stack.delivery_states().get(pacs) == "sent", 120,
               "the redelivered task to finish", stack.logs)
    wait_until(stack.broker_idle, 60, "the broker to drain", stack.logs)
    assert stack.rows("SELECT count(*) FROM score")[0][0] == 1
    assert stack.rows("SELECT count(*) FROM report")[0][0] == 1
    assert stack.rows("SELECT status FROM instance")[0][0] == "scored"
