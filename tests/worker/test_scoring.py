"""Scoring on SQLite and PostgreSQL: batches, idempotence, failures, redelivery take-over."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, InstanceStatus, Score, ScoreClaim, utcnow
from db.scores import claim_lead, claim_more
from tests.worker.conftest import AddInstance, load_cpu, scoring_options
from worker.score.ensemble import Ensemble
from worker.score.live import ScoreRun, score_instances

OPTIONS = scoring_options("test", score_batch=8, indeterminate_std=1.0)


@pytest.fixture(scope="module")
def ensemble(tiny_ensemble: Path) -> Ensemble:
    return load_cpu(tiny_ensemble)


def _statuses(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        return {i.id: i.status for i in session.scalars(select(Instance))}


def _score_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Score)) or 0)


def test_one_task_scores_the_queue_as_a_batch_and_twice_is_once(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble
) -> None:
    study = generate_uid()
    ids = [add_instance(study, seed=i) for i in range(3)]
    other_study = add_instance(generate_uid(), seed=9)

    run = score_instances(sessions, ids[0], "task-1", lambda: ensemble, OPTIONS)

    assert sorted(run.claimed) == sorted([*ids, other_study])
    assert len(run.scored) == 4 and run.failed == ()
    assert len(run.studies) == 2
    assert set(_statuses(sessions).values()) == {"scored"}
    with sessions() as session:
        score = session.scalars(select(Score).where(Score.instance_id == ids[0])).one()
    assert score.decision == "suspected"  # threshold 0
    assert len(score.fold_probabilities) == 2 and score.batch_size == 4
    assert score.model_version == ensemble.model_version and score.worker_host == "test"

    # The same task delivered again, and the other instances' own tasks: all no-ops.
    for lead, token in [(ids[0], "task-1"), (ids[1], "task-2"), (other_study, "task-4")]:
        again = score_instances(sessions, lead, token, lambda: ensemble, OPTIONS)
        assert again.noop and again.scored == ()
    assert _score_count(sessions) == 4


def test_batch_size_limits_the_claim(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble
) -> None:
    ids = [add_instance(generate_uid(), seed=i) for i in range(3)]
    options = scoring_options(score_batch=2, indeterminate_std=1.0)
    one_batch = score_instances(sessions, ids[2], "t", lambda: ensemble,
                                dataclasses.replace(options, max_batches=1))
    assert len(one_batch.claimed) == 2 and ids[2] in one_batch.claimed
    assert list(_statuses(sessions).values()).count("queued") == 1

    # a task goes on with further batches of what is queued (worker.score.live)
    batches: list[ScoreRun] = []
    more = [add_instance(generate_uid(), seed=5 + i) for i in range(2)]
    run = score_instances(sessions, more[0], "t2", lambda: ensemble, options,
                          on_recorded=batches.append)
    assert [len(b.claimed) for b in batches] == [2, 1]
    assert set(_statuses(sessions).values()) == {"scored"} and len(run.scored) == 3


def test_an_undecodable_image_is_failed_with_its_reason(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble,
    tmp_path: Path,
) -> None:
    study = generate_uid()
    good = add_instance(study, seed=1)
    bad = add_instance(study, seed=2)
    with sessions() as session:
        path = Path(session.get(Instance, bad).file_path)  # type: ignore[union-attr]
    path.write_bytes(path.read_bytes()[:1200])  # truncated pixel data

    run = score_instances(sessions, bad, "t", lambda: ensemble, OPTIONS)

    assert run.failed == (bad,) and run.scored == (good,)
    with sessions() as session:
        failed = session.get(Instance, bad)
        assert failed is not None and failed.status == "failed"
        assert failed.status_reason and failed.status_reason.startswith("cannot decode")
    assert _score_count(sessions) == 1


def test_a_redelivered_task_takes_back_its_claims(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble
) -> None:
    ids = [add_instance(generate_uid(), seed=i) for i in range(3)]
    # Task "dead" claims everything, then its worker is killed before scoring.
    with sessions.begin() as session:
        assert claim_lead(session, ids[0], "dead", utcnow() - dt.timedelta(seconds=600))
        assert sorted(claim_more(session, ids[0], "dead", 7)) == ids[1:]
    assert set(_statuses(sessions).values()) == {"scoring"}

    # Another task for one of those rows leaves them to the (fresh) claim ...
    assert score_instances(sessions, ids[1], "other", lambda: ensemble, OPTIONS).noop
    # ... and the redelivered task (same id) takes them all back and scores them once.
    run = score_instances(sessions, ids[0], "dead", lambda: ensemble, OPTIONS)
    assert sorted(run.scored) == ids
    assert _score_count(sessions) == 3


def test_a_stale_claim_is_taken_over(
    sessions: sessionmaker[Session], add_instance: AddInstance, ensemble: Ensemble
) -> None:
    instance = add_instance(generate_uid())
    with sessions.begin() as session:
        claim_lead(session, instance, "lost", utcnow())
    run = score_instances(sessions, instance, "new", lambda: ensemble,
                          scoring_options(score_lease_s=0.0, indeterminate_std=1.0))
    assert run.scored == (instance,)
    with sessions() as session:
        assert session.get(ScoreClaim, instance).token == "new"  # type: ignore[union-attr]


def test_a_model_that_cannot_load_releases_the_claims(
    sessions: sessionmaker[Session], add_instance: AddInstance
) -> None:
    ids = [add_instance(generate_uid(), seed=i) for i in range(2)]

    def broken() -> Ensemble:
        raise RuntimeError("weights unreadable")

    with pytest.raises(RuntimeError, match="weights unreadable"):
        score_instances(sessions, ids[0], "t", broken, OPTIONS)
    # Back to received: the node's sweeper publishes them again, nothing is lost.
    assert set(_statuses(sessions).values()) == {InstanceStatus.RECEIVED.value}
