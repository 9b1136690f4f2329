"""One study as the study page and ``/api/studies/{uid}`` show it: images, scores, history."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Delivery, Instance, Report, Score, Study


@dataclass(frozen=True)
class ImageView:
    instance_id: int
    sop_instance_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    status: str
    status_reason: str | None
    heatmap_url: str | None = None  # the latest report's result image, when made from this one


@dataclass(frozen=True)
class ScoreView:
    instance_id: int
    model_version: str
    probability_mean: float
    probability_std: float
    fold_probabilities: list[float]
    threshold: float
    decision: str
    created_at: dt.datetime


@dataclass(frozen=True)
class RevisionView:
    report_id: int
    revision: int
    model_version: str
    decision: str
    priority: str
    probability_mean: float
    probability_std: float
    created_at: dt.datetime


@dataclass(frozen=True)
class DeliveryView:
    report_id: int
    revision: int
    destination: str
    state: str
    attempts: int
    last_error: str | None
    updated_at: dt.datetime
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class StudyDetail:
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    received_at: dt.datetime
    patient_name: str | None
    patient_id: str | None
    images: list[ImageView]
    scores: list[ScoreView]
    revisions: list[RevisionView]  # oldest first
    deliveries: dict[str, list[DeliveryView]] = field(default_factory=dict)  # by destination

    @property
    def latest(self) -> RevisionView | None:
        return self.revisions[-1] if self.revisions else None

    def as_json(self) -> dict[str, Any]:
        def _plain(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, list):
                return [_plain(v) for v in value]
            if isinstance(value, dict):
                return {k: _plain(v) for k, v in value.items()}
            if hasattr(value, "__dataclass_fields__"):
                return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
            return value

        return dict(_plain(self))


def study_detail(session: Session, uid: str, *, show_phi: bool) -> StudyDetail | None:
    """Everything recorded about study ``uid``, or ``None`` if there is no such study."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        return None
    instances = list(session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)))
    ids = [i.id for i in instances]
    scores = list(session.scalars(
        select(Score).where(Score.instance_id.in_(ids)).order_by(Score.id))) if ids else []
    reports = list(session.scalars(
        select(Report).where(Report.study_id == study.id).order_by(Report.id)))
    revision = {r.id: r.revision for r in reports}
    overlaid = _result_image_source(reports)
    deliveries: dict[str, list[DeliveryView]] = {}
    if reports:
        for d in session.scalars(select(Delivery).where(Delivery.report_id.in_(revision))
                                 .order_by(Delivery.destination, Delivery.id)):
            deliveries.setdefault(d.destination, []).append(DeliveryView(
                d.report_id, revision[d.report_id], d.destination, str(d.state), d.attempts,
                d.last_error, d.updated_at, d.sent_at))
    return StudyDetail(
        study.study_instance_uid, study.accession_number, study.study_date,
        study.study_description, study.first_received_at,
        study.patient_name if show_phi else None, study.patient_id if show_phi else None,
        images=[ImageView(i.id, i.sop_instance_uid, i.modality, i.body_part_examined,
                          i.view_position, str(i.status), i.status_reason,
                          heatmap_url(uid, i.id) if i.id == overlaid else None)
                for i in instances],
        scores=[ScoreView(s.instance_id, s.model_version, s.probability_mean,
                          s.probability_std, list(s.fold_probabilities), s.threshold,
                          str(s.decision), s.created_at) for s in scores],
        revisions=[RevisionView(r.id, r.revision, r.model_version, str(r.decision),
                                str(r.priority), r.probability_mean, r.probability_std,
                                r.created_at) for r in reports],
        deliveries=deliveries,
    )


def _result_image_source(reports: list[Report]) -> int | None:
    """The image the latest report's result image was made from (``None``: it has none)."""
    latest = reports[-1] if reports else None
    if latest is None or latest.image_file_path is None:
        return None
    return latest.source_instance_id


def heatmap_url(uid: str, instance_id: int) -> str:
    return f"/studies/{uid}/images/{instance_id}/heatmap.png"


def result_image_path(session: Session, uid: str, instance_id: int) -> str | None:
    """The result image file of study ``uid``'s latest report, when it was made from image
    ``instance_id`` (``None`` otherwise)."""
    reports = list(session.scalars(
        select(Report).join(Study, Study.id == Report.study_id)
        .where(Study.study_instance_uid == uid).order_by(Report.id)))
    if _result_image_source(reports) != instance_id:
        return None
    return reports[-1].image_file_path


def image_path(session: Session, uid: str, instance_id: int) -> str | None:
    """The stored file of one image of study ``uid`` (``None``: not in that study)."""
    return session.scalar(
        select(Instance.file_path).join(Study, Study.id == Instance.study_id)
        .where(Study.study_instance_uid == uid, Instance.id == instance_id))
