"""Queries of the model registry, local labels and validations (migrations 0006 and 0007).

Every promotion and rollback is also written to the web app's ``audit_log`` (0005).

The live model is what the promotion history leaves on top: a promotion pushes its version,
a rollback pops back to the version live before it (:func:`live_stack`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import (
    AuditLog,
    Instance,
    ModelAction,
    ModelPromotion,
    ModelVersion,
    Study,
    StudyLabel,
    Validation,
)


@dataclass(frozen=True)
class NewModelVersion:
    """What ``model import`` records of an ensemble copied into the store."""

    version: str
    label: str
    directory: str
    dataset_fingerprint: str
    threshold: float
    manifest: dict[str, Any]
    imported_by: str
    derived_from: str | None = None


def add_model_version(session: Session, new: NewModelVersion) -> ModelVersion:
    """Insert the registry row (the caller has checked that ``version`` is new)."""
    row = ModelVersion(version=new.version, label=new.label, directory=new.directory,
                       dataset_fingerprint=new.dataset_fingerprint, threshold=new.threshold,
                       manifest=new.manifest, imported_by=new.imported_by,
                       derived_from=new.derived_from)
    session.add(row)
    session.flush()
    return row


def get_model_version(session: Session, version: str) -> ModelVersion | None:
    """The registry row of ``version``, if imported."""
    return session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()


def model_versions(session: Session) -> list[ModelVersion]:
    """Every imported version, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.imported_at,
                                                              ModelVersion.id)))


def promotions(session: Session) -> list[ModelPromotion]:
    """The promotion history, oldest first."""
    return list(session.scalars(select(ModelPromotion).order_by(ModelPromotion.id)))


def live_stack(history: Sequence[ModelPromotion]) -> list[str]:
    """Replay the history: the versions that rollbacks would return to, the live one last."""
    stack: list[str] = []
    for row in history:
        if row.action is ModelAction.ROLLBACK:
            if stack:
                stack.pop()
            if not stack or stack[-1] != row.version:
                stack.append(row.version)
        else:
            stack.append(row.version)
    return stack


def live_model(session: Session) -> ModelVersion | None:
    """The registry row of the live model, or ``None`` when nothing was ever promoted."""
    stack = live_stack(promotions(session))
    return get_model_version(session, stack[-1]) if stack else None


@dataclass(frozen=True)
class NewPromotion:
    """One change of the live model."""

    version: str
    action: ModelAction
    previous_version: str | None
    promoted_by: str
    reason: str | None = None
    forced: bool = False
    validation_id: int | None = None


def record_promotion(session: Session, new: NewPromotion) -> ModelPromotion:
    """Append a row to the promotion history."""
    row = ModelPromotion(version=new.version, action=new.action,
                         previous_version=new.previous_version, promoted_by=new.promoted_by,
                         reason=new.reason, forced=new.forced, validation_id=new.validation_id)
    session.add(row)
    detail = (f"{new.action.value} {new.version} (was {new.previous_version or 'none'})"
              + (" FORCED" if new.forced else "")
              + (f": {new.reason}" if new.reason else ""))
    session.add(AuditLog(username=new.promoted_by, action=f"model_{new.action.value}",
                         detail=detail[:255]))
    session.flush()
    return row


# --- Labels ---------------------------------------------------------------------------------


def find_study(session: Session, key: str) -> int | None:
    """The id of the study whose Study Instance UID or accession number is ``key``."""
    found = session.scalars(select(Study.id).where(Study.study_instance_uid == key)).first()
    if found is None:
        found = session.scalars(select(Study.id).where(Study.accession_number == key)
                                .order_by(Study.id)).first()
    return found


@dataclass(frozen=True)
class NewLabel:
    """Ground truth for one study."""

    study_id: int
    positive: bool
    source: str
    labelled_on: dt.date


def replace_labels(session: Session, labels: Sequence[NewLabel], imported_by: str) -> int:
    """Record ``labels``; a study labelled before gets the new label (the last import wins)."""
    study_ids = [label.study_id for label in labels]
    if study_ids:
        session.execute(delete(StudyLabel).where(StudyLabel.study_id.in_(study_ids)))
    for label in labels:
        session.add(StudyLabel(study_id=label.study_id, positive=label.positive,
                               source=label.source, labelled_on=label.labelled_on,
                               imported_by=imported_by))
    session.flush()
    return len(labels)


@dataclass(frozen=True)
class LabelledInstance:
    """A received image of a labelled study."""

    study_id: int
    study_instance_uid: str
    instance_id: int
    file_path: str
    content_sha256: str
    positive: bool


def labelled_instances(session: Session) -> list[LabelledInstance]:
    """Every received image of every labelled study, study and instance id order."""
    query = (select(StudyLabel.study_id, Study.study_instance_uid, Instance.id,
                    Instance.file_path, Instance.content_sha256, StudyLabel.positive)
             .join(Study, Study.id == StudyLabel.study_id)
             .join(Instance, Instance.study_id == StudyLabel.study_id)
             .order_by(StudyLabel.study_id, Instance.id))
    return [LabelledInstance(int(a), str(b), int(c), str(d), str(e), bool(f))
            for a, b, c, d, e, f in session.execute(query)]


def label_count(session: Session) -> int:
    """How many studies have a label."""
    return int(session.scalar(select(func.count(StudyLabel.id))) or 0)


# --- Validations ----------------------------------------------------------------------------


def record_validation(session: Session, *, version: str, data_source: str, passed: bool,
                      criteria: dict[str, Any], metrics: dict[str, Any], report_path: str,
                      created_by: str) -> int:
    """Insert a validation's verdict; returns its id."""
    row = Validation(version=version, data_source=data_source[:1024], passed=passed,
                     criteria=criteria, metrics=metrics, report_path=report_path[:1024],
                     created_by=created_by)
    session.add(row)
    session.flush()
    return row.id


def latest_validation(session: Session, version: str) -> Validation | None:
    """The most recent validation of ``version``."""
    return session.scalars(select(Validation).where(Validation.version == version)
                           .order_by(Validation.id.desc()).limit(1)).first()
