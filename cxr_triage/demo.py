"""``cxr-triage demo``: the whole path on embedded defaults, in a few minutes on a CPU.

Builds (or reuses) a small demo ensemble, starts the node and a worker, runs a local PACS that
receives the structured reports, sends sample studies over DICOM, waits for the reports and
prints the worklist. Everything lives under ``var/demo``; nothing is for clinical use.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select

from common.errors import TriageError
from cxr_triage.synthetic import dicom_study, write_training_set
from cxr_triage.up import Stack

MODALITY_AE = "DEMO_MODALITY"
PACS_AE = "DEMO_PACS"
NODE_AE = "CXR_TRIAGE"
DEMO_LABEL = "DEMO ensemble - trained for seconds - NOT FOR CLINICAL USE"
# Demo accounts of the web app (a loopback demo database only; never reuse these passwords).
DEMO_USERS = (("demo-admin", "demo-admin-password", "admin", True),
              ("demo-radiologist", "demo-radiologist-password", "radiologist", False))


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def pacs(self) -> Path:
        return self.root / "pacs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'triage.db'}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_ensemble(paths: DemoPaths, data: Path | None) -> None:
    """Train a tiny 10-fold ensemble for the demo unless one is already there."""
    if (paths.model / "ensemble.json").is_file():
        print(f"demo: using the demo ensemble in {paths.model}")
        return
    if data is None:
        data = write_training_set(paths.root / "synthetic-train", per_class=24)
        print(f"demo: no --data given, so training on 48 SYNTHETIC radiographs in {data}")
    else:
        print(f"demo: training briefly on {data}")
    command = [sys.executable, "-m", "cxr_triage", "train", "--data", str(data),
               "--out", str(paths.model), "--folds", "10", "--epochs", "6", "--input-size",
               "64", "--batch-size", "8", "--weights", "none", "--limit", "24",
               "--label", DEMO_LABEL]
    if subprocess.run(command, check=False).returncode != 0:
        raise TriageError("demo: training the demo ensemble failed (see the output above)")


def start_pacs(paths: DemoPaths, port: int) -> object:
    """A minimal local PACS (pynetdicom Storage SCP) that keeps what it receives."""
    paths.pacs.mkdir(parents=True, exist_ok=True)

    def store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        dataset.save_as(paths.pacs / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    ae = AE(ae_title=PACS_AE)
    ae.supported_contexts = AllStoragePresentationContexts
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_C_STORE, store)])


def sample_studies() -> list[list[Dataset]]:
    """Three covid-like and three clear synthetic studies, one with two images, one lateral."""
    rng = np.random.default_rng(2026)
    studies = [dicom_study(rng, covid=i % 2 == 0, accession=f"DEMO{i:03d}",
                           images=2 if i == 2 else 1) for i in range(6)]
    studies.append(dicom_study(rng, covid=False, accession="DEMO-LAT", view="LL"))
    return studies


def send_studies(port: int, studies: list[list[Dataset]]) -> None:
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        raise TriageError("demo: the node refused the association")
    try:
        for study in studies:
            for dataset in study:
                status = assoc.send_c_store(dataset)
                if getattr(status, "Status", None) != 0:
                    raise TriageError(f"demo: C-STORE failed: {status}")
    finally:
        assoc.release()
    print(f"demo: sent {sum(map(len, studies))} images in {len(studies)} studies as "
          f"{MODALITY_AE}")


def wait_for_reports(db_url: str, expected_studies: int, stack: Stack, timeout_s: float) -> None:
    """Block until every candidate study has a delivered report."""
    from db.models import Delivery, Report
    from db.session import make_engine, make_session_factory

    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if (name := stack.failed()) is not None:
                raise TriageError(f"demo: the {name} process stopped; see its log")
            with sessions() as session:
                reported = set(session.scalars(select(Report.study_id)))
                states = list(session.scalars(select(Delivery.state)))
            if len(reported) >= expected_studies and states and all(
                    s in ("sent", "failed", "shadow", "withheld") for s in states):
                return
            time.sleep(1.0)
    finally:
        engine.dispose()
    raise TriageError(f"demo: not every study was reported within {timeout_s:.0f} s")


def print_worklist(db_url: str) -> None:
    from cxr_triage.worklist_cli import format_worklist
    from db.session import make_engine, make_session_factory
    from db.worklist import worklist

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        rows = worklist(session)
    engine.dispose()
    print("\nWorklist (synthetic data, demo ensemble, NOT FOR CLINICAL USE):\n")
    print(format_worklist(rows))


def run_demo(root: Path, data: Path | None, fresh: bool, timeout_s: float,
             serve: bool = False) -> int:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    paths = DemoPaths(root)
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
    for name in ("storage", "broker", "pacs", "logs", "metrics"):  # each run starts afresh
        shutil.rmtree(root / name, ignore_errors=True)
    (root / "triage.db").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    build_ensemble(paths, data)
    node_port, pacs_port, web_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "TRIAGE_VAR_DIR": str(root),
        "TRIAGE_DB_URL": paths.db_url,
        "TRIAGE_BROKER_URL": "filesystem://",
        "TRIAGE_MODEL_DIR": str(paths.model),
        "TRIAGE_PORT": str(node_port),
        "TRIAGE_ALLOWED_AETS": MODALITY_AE,
        "TRIAGE_DESTINATIONS": f"{PACS_AE}@127.0.0.1:{pacs_port}",
        "TRIAGE_STUDY_QUIET_S": "3",
        "TRIAGE_MIN_FREE_BYTES": "0",
        "TRIAGE_WEB_PORT": str(web_port),
        "TRIAGE_WEB_SECRET_KEY_FILE": str(root / "web-secret.key"),
        "TRIAGE_METRICS_DIR": str(root / "metrics"),
        "TRIAGE_MODEL_STORE": str(root / "models"),
    }
    promote_demo_model(paths, env)
    pacs = start_pacs(paths, pacs_port)
    stack = Stack(env, log_dir=paths.logs)
    stack.start()
    try:
        add_demo_users(paths.db_url)
        _wait_for_node(node_port, stack)
        studies = sample_studies()
        send_studies(node_port, studies)
        wait_for_reports(paths.db_url, len(studies) - 1, stack, timeout_s)
        print_worklist(paths.db_url)
        modalities = [str(dcmread(path, stop_before_pixels=True).Modality)
                      for path in sorted(paths.pacs.glob("*.dcm"))]
        print(f"\ndemo: the local PACS {PACS_AE} received {modalities.count('SR')} structured "
              f"reports and {len(modalities) - modalities.count('SR')} result images in "
              f"{paths.pacs}; logs are in {paths.logs}")
        print_web_access(web_port)
        if serve:
            print("demo: the node, the workers and the web app keep running; Ctrl-C stops them")
            stack.supervise()
    finally:
        stack.stop()
        pacs.shutdown()  # type: ignore[attr-defined]
    return 0


def promote_demo_model(paths: DemoPaths, env: dict[str, str]) -> None:
    """Put the demo ensemble live the way a site does (docs/go-live.md): migrate, ``model
    import``, ``model promote``. The demo has no labelled local data to validate on, so the
    promotion is forced, with the reason recorded in the audit trail."""
    from training.manifest import load_manifest

    version = load_manifest(paths.model, verify_hashes=False).model_version
    for args in (["db", "upgrade"], ["model", "import", str(paths.model)],
                 ["model", "promote", version, "--force", "--by", "demo", "--reason",
                  "demo: synthetic data, no local validation; NOT FOR CLINICAL USE"]):
        done = subprocess.run([sys.executable, "-m", "cxr_triage", *args], env=env,
                              check=False)
        if done.returncode != 0:
            raise TriageError(f"demo: `cxr-triage {' '.join(args[:2])}` failed (see above)")


def add_demo_users(db_url: str) -> None:
    """A demo admin (may see PHI) and a radiologist (may not), with the passwords printed."""
    from db.models import Role
    from db.session import make_engine, make_session_factory
    from web.accounts import add_user

    engine = make_engine(db_url)
    try:
        with make_session_factory(engine).begin() as session:
            for name, password, role, phi in DEMO_USERS:
                add_user(session, name, password, role=Role(role), can_view_phi=phi)
    finally:
        engine.dispose()


def print_web_access(port: int) -> None:
    print(f"\nWeb worklist (studies in triage order): http://127.0.0.1:{port}/worklist")
    for name, password, role, phi in DEMO_USERS:
        print(f"  {role:12} user {name!r}, password {password!r}"
              f"{' (sees patient names)' if phi else ' (no patient names)'}")


def _wait_for_node(port: int, stack: Stack, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.failed() is not None:
            raise TriageError("demo: the node or the worker did not start; see var/demo/logs")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise TriageError("demo: the node did not start listening")
