"""A seeded fuzz corpus from the shared DICOM files against a real node process.

Whatever arrives, the node answers a named status (never pynetdicom's 0xC211 for an exception
in the handler), keeps no temporary file, and keeps storage and database in step: every file
in the storage tree has a row and every row's file exists with the recorded hash.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.status import StoreStatus
from dicom_node.storage import sha256_of
from tests.support import dicomfuzz
from tests.support.node import NodeProcess
from tests.support.servers import RedisServer

SEED = 20261201
CORPUS_SIZE = 320
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on broken input


@pytest.fixture
def fuzz_node(tmp_path: Path, db_url: str, redis_server: RedisServer) -> Iterator[NodeProcess]:
    """A node that also accepts Secondary Capture, so every shared radiograph can be used."""
    node = NodeProcess(tmp_path / "node", db_url, redis_server.url,
                       env={"TRIAGE_ACCEPT_SECONDARY_CAPTURE": "true"}).start()
    yield node
    node.stop()


def _stored_files(node: NodeProcess) -> set[str]:
    return {str(p) for p in node.storage.rglob("*")
            if p.is_file() and ".incoming" not in p.relative_to(node.storage).parts}


def _incoming_empty(node: NodeProcess, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        left = list((node.storage / ".incoming").iterdir())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_fuzzed_datasets_get_named_statuses_and_lose_nothing(
    fuzz_node: NodeProcess, shared_dicom: Path, tmp_path: Path
) -> None:
    node = fuzz_node
    corpus = dicomfuzz.make_corpus(dicomfuzz.load_sources(shared_dicom), tmp_path / "corpus",
                                   CORPUS_SIZE, SEED)
    assert len(corpus) >= 300
    statuses = dicomfuzz.send_many(node.port, corpus)

    named = {int(s) for s in StoreStatus}
    by_status = collections.Counter(statuses)
    unnamed = {f"{m.path.name}: {s!r}" for m, s in zip(corpus, statuses, strict=True)
               if s not in named}
    assert not unnamed, f"statuses that are not StoreStatus (0xC211 is a handler exception): " \
                        f"{sorted(unnamed)[:20]}\n{node.log()[-3000:]}"
    controls = [s for m, s in zip(corpus, statuses, strict=True) if m.kind == "control"]
    assert controls and all(s == StoreStatus.SUCCESS for s in controls), controls
    assert by_status[StoreStatus.SUCCESS] < len(corpus)  # the corpus does break things

    assert _incoming_empty(node) == [], "temporary files with patient data left behind"
    rows = node.rows("SELECT sop_instance_uid, file_path, content_sha256 FROM instance")
    on_disk = _stored_files(node)
    referenced = {str(row[1]) for row in rows}
    assert on_disk == referenced, (
        f"files without a row: {sorted(on_disk - referenced)[:5]}; "
        f"rows without a file: {sorted(referenced - on_disk)[:5]}")
    for _, path, digest in rows:
        assert sha256_of(Path(str(path))) == digest
    accepted = {m.sop_instance for m, s in zip(corpus, statuses, strict=True)
                if s == StoreStatus.SUCCESS}
    assert accepted == {str(row[0]) for row in rows}

    log = node.log()
    assert "Exception in handler" not in log and "Traceback" not in log
    assert node.echo()
    print(f"fuzz: {len(corpus)} files, statuses "
          f"{ {StoreStatus(s).name: n for s, n in by_status.items() if s is not None} }")
