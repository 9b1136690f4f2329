"""``rescore --distributed``: batches on the score queue of a private redis-server, scored by a
real ``cxr-triage worker`` process; the command follows progress in the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.rescore.conftest import cli, cli_env, query, write_study
from tests.support.servers import RedisServer
from tests.worker.conftest import AddInstance
from tests.worker.processes import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_distributed_run_is_scored_by_workers(
    tmp_path: Path, db_url: str, tiny_ensemble: Path, add_instance: AddInstance
) -> None:
    count = 5
    for index in range(count):
        for path in write_study(tmp_path / "in" / str(index), 1, brightness=0.3 + index / 10):
            add_instance(generate_uid(), path=path)
    redis = RedisServer(tmp_path / "redis").start()
    worker = WorkerProcess(tmp_path / "worker", db_url=db_url, broker_url=redis.url,
                           model_dir=tiny_ensemble, storage_dir=tmp_path / "storage")
    try:
        worker.start()
        env = cli_env(tmp_path, db_url, tiny_ensemble, TRIAGE_BROKER_URL=redis.url,
                      TRIAGE_RESCORE_BATCH="2", TRIAGE_RESCORE_STALL_S="90")
        run = cli(env, "rescore", "--distributed", "--send", "all")
        assert run.returncode == 0, run.stdout + run.stderr + worker.log()[-4000:]
        assert f"scored by this run       {count}" in run.stdout
        assert f"reports written          {count}" in run.stdout
        assert worker.log().count("rescore batch of") >= 3  # ceil(5 / 2) tasks
        assert query(db_url, "SELECT count(*) FROM score")[0][0] == count
        assert query(db_url, "SELECT mode, status, scored FROM rescore_run") == [
            ("distributed", "succeeded", count)]
        again = cli(env, "rescore", "--distributed", "--send", "all")
        assert again.returncode == 0 and "scored by this run       0" in again.stdout
        assert "reports written          0" in again.stdout
    finally:
        worker.stop()
        redis.kill()
