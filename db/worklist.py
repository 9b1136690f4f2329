"""The radiologist's worklist: studies in triage priority order with their latest report."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Delivery, Instance, InstanceStatus, Report, Study

DECISION_RANK = {"suspected": 0, "indeterminate": 1}
PENDING = "pending"


@dataclass(frozen=True)
class WorklistRow:
    """One study as the worklist shows it; patient fields are ``None`` unless asked for."""

    study_instance_uid: str
    accession_number: str | None
    received_at: dt.datetime
    decision: str
    probability_mean: float | None
    probability_std: float | None
    delivery: str
    model_version: str | None
    patient_name: str | None = None
    patient_id: str | None = None

    @property
    def label(self) -> str:
        return self.accession_number or self.study_instance_uid

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["received_at"] = self.received_at.isoformat()
        return data


def _delivery_summary(states: list[str]) -> str:
    """``sent 2/2``, ``retrying``, ``failed``… across a report's destinations."""
    if not states:
        return "-"
    sent = states.count("sent")
    worst = next((s for s in ("failed", "retrying", "pending", "withheld") if s in states), None)
    summary = f"sent {sent}/{len(states)}"
    return summary if worst is None else f"{summary}, {worst}"


def _sort_key(row: WorklistRow) -> tuple[int, float, dt.datetime]:
    rank = DECISION_RANK.get(row.decision, 2)
    probability = -(row.probability_mean or 0.0) if rank == 0 else 0.0
    return rank, probability, row.received_at


def worklist(
    session: Session,
    *,
    since: dt.datetime | None = None,
    decisions: frozenset[str] | None = None,
    show_phi: bool = False,
) -> list[WorklistRow]:
    """Suspected first by probability, then indeterminate, then the rest by arrival time."""
    latest = (
        select(Report.study_id, func.max(Report.id).label("report_id"))
        .group_by(Report.study_id)
        .subquery()
    )
    query = (
        select(Study, Report)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(Report, Report.id == latest.c.report_id)
    )
    if since is not None:
        query = query.where(Study.first_received_at >= since)
    pairs = session.execute(query).all()
    report_ids = [report.id for _, report in pairs if report is not None]
    states: dict[int, list[str]] = {}
    if report_ids:
        for report_id, state in session.execute(
            select(Delivery.report_id, Delivery.state).where(Delivery.report_id.in_(report_ids))
        ):
            states.setdefault(report_id, []).append(state)
    unreported = [study.id for study, report in pairs if report is None]
    waiting = _unreported_state(session, unreported)
    rows = [_row(study, report, states, show_phi, waiting.get(study.id, PENDING))
            for study, report in pairs]
    if decisions:
        rows = [row for row in rows if row.decision in decisions]
    return sorted(rows, key=_sort_key)


def _unreported_state(session: Session, study_ids: list[int]) -> dict[int, str]:
    """``skipped`` when no image of the study is a triage candidate, ``failed`` when every
    candidate failed, else ``pending``."""
    if not study_ids:
        return {}
    statuses: dict[int, set[str]] = {}
    for study_id, status in session.execute(
        select(Instance.study_id, Instance.status).where(Instance.study_id.in_(study_ids))
    ):
        statuses.setdefault(study_id, set()).add(status)
    result: dict[int, str] = {}
    for study_id, seen in statuses.items():
        if seen == {InstanceStatus.SKIPPED.value}:
            result[study_id] = InstanceStatus.SKIPPED.value
        elif seen <= {InstanceStatus.SKIPPED.value, InstanceStatus.FAILED.value}:
            result[study_id] = InstanceStatus.FAILED.value
    return result


def _row(study: Study, report: Report | None, states: dict[int, list[str]],
         show_phi: bool, unreported: str) -> WorklistRow:
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        received_at=study.first_received_at,
        decision=report.decision if report else unreported,
        probability_mean=report.probability_mean if report else None,
        probability_std=report.probability_std if report else None,
        delivery=_delivery_summary(states.get(report.id, [])) if report else "-",
        model_version=report.model_version if report else None,
        patient_name=study.patient_name if show_phi else None,
        patient_id=study.patient_id if show_phi else None,
    )
