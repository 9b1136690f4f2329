"""Interrupt and resume: a run SIGKILLed after its first batch, continued by the next run.

An undecodable instance is recorded with its reason (exit 3, partial); a repeated run does
nothing (exit 0) and scores no instance twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.rescore.conftest import cli, cli_env, query, write_study
from tests.support.hooked_cli import KILL_AFTER_RESCORE_BATCHES
from tests.worker.conftest import AddInstance

pytestmark = pytest.mark.integration


def _truncated(tmp_path: Path) -> Path:
    (path,) = write_study(tmp_path / "broken", 1, brightness=0.5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])  # the header reads, the pixels don't
    return path


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_interrupted_run_resumes_without_rescoring(
    tmp_path: Path, db_url: str, tiny_ensemble: Path, add_instance: AddInstance
) -> None:
    good = 6
    for index in range(good):
        study = generate_uid()
        for path in write_study(tmp_path / "in" / str(index), 1, brightness=0.2 + index / 10):
            add_instance(study, path=path)
    broken = add_instance(generate_uid(), path=_truncated(tmp_path))
    env = cli_env(tmp_path, db_url, tiny_ensemble, TRIAGE_RESCORE_BATCH="2")

    killed = cli(env, "rescore", "--send", "none", hooks={KILL_AFTER_RESCORE_BATCHES: "1"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    (first,) = query(db_url, "SELECT count(*) FROM score")[0]
    assert first == 2
    assert query(db_url, "SELECT status FROM rescore_run") == [("running",)]

    dry = cli(env, "rescore", "--send", "none", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"(to score: {good + 1 - first})" in dry.stdout

    resumed = cli(env, "rescore", "--send", "none")
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    assert f"scored by this run       {good - first}" in resumed.stdout
    assert f"already scored           {first}" in resumed.stdout
    assert f"failed: instance {broken}: cannot decode" in resumed.stdout
    per_instance = query(db_url, "SELECT instance_id, count(*) FROM score GROUP BY instance_id")
    assert len(per_instance) == good and {n for _, n in per_instance} == {1}
    ((reason,),) = query(db_url, f"SELECT reason FROM rescore_failure WHERE instance_id = {broken}")
    assert str(reason).startswith("cannot decode")

    again = cli(env, "rescore", "--send", "none")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "scored by this run       0" in again.stdout
    assert "failed earlier           1" in again.stdout
    assert query(db_url, "SELECT status, scored, failed FROM rescore_run ORDER BY id") == [
        ("interrupted", 0, 0), ("partial", good - first, 1), ("succeeded", 0, 0)]
    assert query(db_url, "SELECT count(*) FROM score")[0][0] == good

    retried = cli(env, "rescore", "--send", "none", "--retry-failed")
    assert retried.returncode == 3 and "failed in this run       1" in retried.stdout
