"""The radiologist's worklist: studies in triage priority order with their latest report.

A study without a report is ``pending`` (being scored or waiting to be quiet), ``retrying``
(its report failed on something that may pass), ``failed`` (its report, or every image, failed
for good) or ``skipped``; ``reason`` says what went wrong, and for a reported study what went
wrong with a later revision or a delivery. Nothing stays "pending" without a reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Delivery, Instance, InstanceStatus, Report, Study

# Suspected, then indeterminate, then (apart) the studies the model could not assess, then
# the rest; a not-assessable study shows no probability (the model makes no claim on it).
DECISION_RANK = {"suspected": 0, "indeterminate": 1, "not_assessable": 2}
OTHER_RANK = 3
NOT_ASSESSABLE = "not_assessable"
NOT_ASSESSABLE_REASON = "not assessable: image unlike the training data"
PENDING = "pending"
RETRYING = "retrying"


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
    reason: str | None = None  # why the report or a delivery failed or is being retried

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
    rank = DECISION_RANK.get(row.decision, OTHER_RANK)
    probability = -(row.probability_mean or 0.0) if rank == 0 else 0.0
    return rank, probability, row.received_at


def worklist(
    session: Session,
    *,
    since: dt.datetime | None = None,
    decisions: frozenset[str] | None = None,
    show_phi: bool = False,
) -> list[WorklistRow]:
    """Suspected first by probability, then indeterminate, then not assessable, then the rest
    by arrival time."""
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
    errors: dict[int, str] = {}
    if report_ids:
        for report_id, destination, state, error in session.execute(
            select(Delivery.report_id, Delivery.destination, Delivery.state, Delivery.last_error)
            .where(Delivery.report_id.in_(report_ids)).order_by(Delivery.id)
        ):
            states.setdefault(report_id, []).append(state)
            if error and state in ("failed", "retrying"):
                errors.setdefault(report_id, f"delivery to {destination}: {error}")
    unreported = [study.id for study, report in pairs if report is None]
    waiting = _unreported_state(session, unreported)
    rows = [_row(study, report, states, show_phi,
                 _status(study, report, waiting.get(study.id), errors))
            for study, report in pairs]
    if decisions:
        rows = [row for row in rows if row.decision in decisions]
    return sorted(rows, key=_sort_key)


def _unreported_state(session: Session, study_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """(``skipped``, reason) when no image of the study is a triage candidate, (``failed``,
    an image's reason) when every candidate failed; studies still in triage are left out."""
    if not study_ids:
        return {}
    statuses: dict[int, set[str]] = {}
    reasons: dict[int, str] = {}
    for study_id, status, reason in session.execute(
        select(Instance.study_id, Instance.status, Instance.status_reason)
        .where(Instance.study_id.in_(study_ids)).order_by(Instance.id)
    ):
        statuses.setdefault(study_id, set()).add(status)
        if reason and status == InstanceStatus.FAILED.value:
            reasons.setdefault(study_id, f"image: {reason}")
    result: dict[int, tuple[str, str | None]] = {}
    for study_id, seen in statuses.items():
        if seen == {InstanceStatus.SKIPPED.value}:
            result[study_id] = (InstanceStatus.SKIPPED.value, None)
        elif seen <= {InstanceStatus.SKIPPED.value, InstanceStatus.FAILED.value}:
            result[study_id] = (InstanceStatus.FAILED.value, reasons.get(study_id))
    return result


def _status(study: Study, report: Report | None, unreported: tuple[str, str | None] | None,
            delivery_errors: dict[int, str]) -> tuple[str | None, str | None]:
    """(state of an unreported study, reason): the report step's own record comes first."""
    if study.report_failed_at is not None:
        return (None if report else "failed"), study.report_error
    if study.report_error:
        return (None if report else RETRYING), study.report_error
    if report is not None:
        return None, delivery_errors.get(report.id)
    return unreported or (PENDING, None)


def _row(study: Study, report: Report | None, states: dict[int, list[str]],
         show_phi: bool, status: tuple[str | None, str | None]) -> WorklistRow:
    unreported, reason = status
    claim = report is not None and report.decision != NOT_ASSESSABLE
    if report is not None and not claim:
        reason = reason or NOT_ASSESSABLE_REASON
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        received_at=study.first_received_at,
        decision=report.decision if report else (unreported or PENDING),
        probability_mean=report.probability_mean if report and claim else None,
        probability_std=report.probability_std if report and claim else None,
        delivery=_delivery_summary(states.get(report.id, [])) if report else "-",
        model_version=report.model_version if report else None,
        patient_name=study.patient_name if show_phi else None,
        patient_id=study.patient_id if show_phi else None,
        reason=reason,
    )
