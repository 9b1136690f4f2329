"""A model promoted between an image's score and its study's report: nothing is left out."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, InstanceStatus
from tests.worker.conftest import AddInstance, report_opts, scoring_options
from tests.worker.fakes import FixedPredictor
from worker.report.identity import ModelIdentity
from worker.report.study import ReportAction, report_study
from worker.score.live import score_instances

NEW_MODEL = ModelIdentity("tiny", "fixed-v2", "cd" * 32, not_for_clinical_use=True)


def _status(sessions: sessionmaker[Session], instance_id: int) -> InstanceStatus:
    with sessions() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        return instance.status


def test_images_scored_by_the_old_model_are_scored_again_by_the_new_one(
    sessions: sessionmaker[Session], add_instance: AddInstance, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    ids = [add_instance(study_uid, seed=i) for i in range(2)]
    old, new = FixedPredictor(version="fixed-v1"), FixedPredictor(version="fixed-v2")
    with sessions() as session:
        for instance_id in ids:
            path = session.get(Instance, instance_id).file_path  # type: ignore[union-attr]
            old.probabilities[path] = new.probabilities[path] = 0.9
    scoring = scoring_options()
    assert len(score_instances(sessions, ids[0], "t1", lambda: old, scoring).scored) == 2
    options = report_opts(tmp_path / "sr", quiet_s=0)
    with sessions() as session:
        study_id = session.get(Instance, ids[0]).study_id  # type: ignore[union-attr]

    # fixed-v2 was promoted before the report: the images go back to be scored by it
    first = report_study(sessions, study_id, identity=NEW_MODEL, model_version="fixed-v2",
                         destinations=[], options=options)
    assert first.action is ReportAction.WAIT
    assert [_status(sessions, i) for i in ids] == [InstanceStatus.RECEIVED] * 2

    for instance_id in ids:  # as the reconciler publishes each `received` row again
        assert score_instances(sessions, instance_id, f"n{instance_id}", lambda: new,
                               scoring).scored == (instance_id,)
    second = report_study(sessions, study_id, identity=NEW_MODEL, model_version="fixed-v2",
                          destinations=[], options=options)
    assert second.action is ReportAction.WRITTEN
