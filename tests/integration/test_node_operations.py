"""What an operator sees: refusals logged with what was proposed, the empty allow-list warning,
and the healthcheck AE that works whatever the hospital's allow-list holds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.support.dcmtk import echoscu
from tests.support.node import NODE_AE, NodeProcess
from tests.support.servers import RedisServer

HOSPITAL = {"TRIAGE_ALLOWED_AETS": "CR_ROOM1,DX_ROOM2"}
JPEG_XL = "1.2.840.10008.1.2.4.112"  # not accepted: no decoder installed
CR = "1.2.840.10008.5.1.4.1.1.1"


def _wait_for(node: NodeProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in node.log():
            return node.log()
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the node log:\n{node.log()[-3000:]}")


def test_refusals_name_the_caller_and_what_it_proposed(tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis_server.url,
                       env=HOSPITAL).start()
    try:
        scu = AE(ae_title="CR_ROOM1")
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        scu.add_requested_context(CR, [JPEG_XL])
        scu.add_requested_context(CR, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        assoc.release()
        log = _wait_for(node, "transfer syntaxes not supported")
        ct_line = next(line for line in log.splitlines() if CTImageStorage in line)
        assert "'CR_ROOM1'" in ct_line and "abstract syntax not supported" in ct_line
        assert "CT Image Storage" in ct_line and "Explicit VR Little Endian" in ct_line
        jxl_line = next(line for line in log.splitlines() if JPEG_XL in line)
        assert "'CR_ROOM1'" in jxl_line and "Computed Radiography Image Storage" in jxl_line

        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context(CR, [ExplicitVRLittleEndian, JPEG_XL])
        refused = intruder.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert refused.is_rejected
        log = _wait_for(node, "'INTRUDER' is not in TRIAGE_ALLOWED_AETS")
        line = next(line for line in log.splitlines() if "'INTRUDER'" in line)
        assert CR in line and ExplicitVRLittleEndian in line and JPEG_XL in line
    finally:
        node.stop()


def test_healthcheck_ae_works_with_only_the_hospitals_modalities(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis_server.url,
                       env=HOSPITAL).start()
    try:
        # The compose healthcheck, word for word apart from the port.
        assert echoscu(node.port, calling_ae="CXR_HEALTHCHECK").returncode == 0
        assert echoscu(node.port, calling_ae="ECHOSCU").returncode != 0
        # The healthcheck title may verify, nothing else.
        sneaky = AE(ae_title="CXR_HEALTHCHECK")
        sneaky.add_requested_context("1.2.840.10008.1.1")
        sneaky.add_requested_context(CR, [ExplicitVRLittleEndian])
        assert sneaky.associate("127.0.0.1", node.port, ae_title=NODE_AE).is_rejected
        _wait_for(node, "admitted for Verification only")
    finally:
        node.stop()


def test_node_and_up_warn_when_the_allow_list_is_empty(tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis_server.url,
                       env={"TRIAGE_ALLOWED_AETS": ""}).start()
    try:
        _wait_for(node, "TRIAGE_ALLOWED_AETS is empty: every association will be refused")
    finally:
        node.stop()
    # `up` says it before starting anything (here it then stops: no ensemble to run).
    env = {**node.env, "TRIAGE_MODEL_DIR": str(tmp_path / "no-model")}
    up = subprocess.run([sys.executable, "-m", "cxr_triage", "up"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert "cxr-triage up: warning: TRIAGE_ALLOWED_AETS is empty" in up.stderr, up.stderr
