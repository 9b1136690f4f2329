"""`cxr-triage up` on embedded defaults: SQLite, the filesystem broker, one machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.orthanc import OrthancServer
from tests.support.servers import free_port, wait_for_port
from tests.worker.processes import query, wait_until


def test_up_runs_the_whole_path_without_servers(tmp_path: Path, tiny_ensemble: Path) -> None:
    pacs = OrthancServer(tmp_path / "orthanc").start()
    port = free_port()
    var = tmp_path / "var"
    env = {
        **os.environ,
        "TRIAGE_VAR_DIR": str(var),
        "TRIAGE_DB_URL": f"sqlite:///{var / 'triage.db'}",
        "TRIAGE_STORAGE_DIR": str(var / "storage"),
        "TRIAGE_BROKER_DIR": str(var / "broker"),
        "TRIAGE_PORT": str(port),
        "TRIAGE_STUDY_QUIET_S": "1",
        "TRIAGE_MIN_FREE_BYTES": "0",
        "TRIAGE_DESTINATIONS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
    }
    env.pop("TRIAGE_BROKER_URL", None)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", "up", "--model-dir", str(tiny_ensemble),
         "--allow-aet", "STORESCU"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, timeout=90)
        files = dicomgen.write_series(tmp_path / "study", 2)
        assert len(storescu(port, files).succeeded) == 2
        db_url = env["TRIAGE_DB_URL"]
        wait_until(lambda: bool(query(db_url, "SELECT state FROM delivery WHERE state = 'sent'")),
                   180, "the SR to be delivered")
        assert [row[0] for row in query(db_url, "SELECT status FROM instance")] == ["scored"] * 2
        assert len(pacs.instances()) == 1
        assert (var / "broker" / "queue").is_dir()  # the filesystem broker carried the tasks
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
        pacs.stop()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
