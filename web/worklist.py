"""The worklist as the web shows it: triage order computed in SQL, one page at a time.

Suspected studies first by probability, then indeterminate and not assessable, then the rest
(not suspected, and studies without a report yet) by arrival. Unlike the CLI's
:func:`db.worklist.worklist` nothing is sorted in Python, so the first page of 100 000
studies costs one indexed query (bench/worklist.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import Select

from db.models import Delivery, Instance, InstanceStatus, Report, Score, Study

SUSPECTED = "suspected"
APART = ("indeterminate", "not_assessable")  # listed after suspected, before the rest
PENDING = "pending"
DECISION_FILTERS = ("suspected", "indeterminate", "not_assessable", "not_suspected", PENDING)


@dataclass(frozen=True)
class WorklistFilter:
    """What the radiologist narrowed the list to (all optional)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    decisions: tuple[str, ...] = ()
    modality: str | None = None
    station: str | None = None  # the sending AE title


@dataclass(frozen=True)
class WorklistItem:
    """One study row; patient name and ID are ``None`` unless the viewer may see them."""

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    received_at: dt.datetime
    decision: str
    priority: str | None
    probability_mean: float | None
    probability_std: float | None
    threshold: float | None
    model_version: str | None
    delivery: str
    modality: str | None = None
    body_part: str | None = None
    station: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["received_at"] = self.received_at.isoformat()
        return data


@dataclass(frozen=True)
class WorklistPage:
    items: list[WorklistItem]
    total: int
    page: int
    page_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _decision_text() -> Any:
    return type_coerce(Report.decision, String)  # raw strings: decisions other code may add


def _is_latest(report: Any) -> Any:
    """No later report of the same study (index ``ix_report_study_id_id``)."""
    newer = aliased(Report)
    return ~select(newer.id).where(newer.study_id == report.study_id,
                                   newer.id > report.id).exists()


def _study_filters(query: Select, filters: WorklistFilter) -> Select:
    if filters.since is not None:
        query = query.where(Study.first_received_at >= filters.since)
    if filters.until is not None:
        query = query.where(Study.first_received_at < filters.until)
    for column, value in ((Instance.modality, filters.modality),
                          (Instance.calling_ae, filters.station)):
        if value:
            query = query.where(select(Instance.id).where(
                Instance.study_id == Study.id, column == value).exists())
    return query


@dataclass(frozen=True)
class _Segment:
    """One band of the triage order: a query of studies already in display order."""

    query: Select
    count: Select | None  # None: total minus the other bands


def _segments(filters: WorklistFilter) -> list[_Segment]:
    """Suspected (by probability), apart (by arrival), the rest (by arrival)."""
    wanted = set(filters.decisions)
    decision = _decision_text()
    segments = []
    for values, order in (((SUSPECTED,), (Report.probability_mean.desc(), Report.id.desc())),
                          (APART, (Study.first_received_at, Study.id))):
        chosen = [v for v in values if not wanted or v in wanted]
        if not chosen:
            continue
        band = _study_filters(select(Study, Report).join(Study, Study.id == Report.study_id)
                              .where(decision.in_(chosen), _is_latest(Report)), filters)
        segments.append(_Segment(band.order_by(*order),
                                 band.with_only_columns(func.count()).order_by(None)))
    ranked = aliased(Report)
    rest = _study_filters(select(Study).where(~select(ranked.id).where(
        ranked.study_id == Study.id, type_coerce(ranked.decision, String).in_(
            (SUSPECTED, *APART)), _is_latest(ranked)).exists()), filters)
    others = wanted - {SUSPECTED, *APART}
    if wanted and not others:
        return segments
    if others:
        latest_in = aliased(Report)
        condition: Any = select(latest_in.id).where(
            latest_in.study_id == Study.id, _is_latest(latest_in),
            type_coerce(latest_in.decision, String).in_(others - {PENDING})).exists()
        if PENDING in others:
            condition = condition | ~select(latest_in.id).where(
                latest_in.study_id == Study.id).exists()
        rest = rest.where(condition)
    count = rest.with_only_columns(func.count()) if wanted else None
    segments.append(_Segment(rest.order_by(Study.first_received_at, Study.id), count))
    return segments


def worklist_page(session: Session, filters: WorklistFilter, *, page: int = 1,
                  page_size: int = 50, show_phi: bool = False) -> WorklistPage:
    """Page ``page`` (1-based) of the worklist under ``filters``.

    Each band is read in index order from the offset the page needs; a study belongs to
    the band of its latest report, so the bands never overlap.
    """
    page = max(page, 1)
    segments = _segments(filters)
    if any(seg.count is None for seg in segments):  # no decision filter: every study
        total = int(session.scalar(_study_filters(
            select(func.count()).select_from(Study), filters)) or 0)
    else:
        total = sum(int(session.scalar(seg.count) or 0) for seg in segments
                    if seg.count is not None)
    pairs = _page_rows(session, segments, (page - 1) * page_size, page_size)
    pairs = _with_latest_reports(session, pairs)
    details = _PageDetails.load(session, [s.id for s, _ in pairs],
                                [r for _, r in pairs if r is not None])
    items = [details.item(study, report, show_phi) for study, report in pairs]
    return WorklistPage(items, total, page, page_size)


def _page_rows(session: Session, segments: list[_Segment], offset: int,
               needed: int) -> list[tuple[Study, Report | None]]:
    """Rows ``offset`` to ``offset + needed`` across the bands; a band is counted only when
    the page starts beyond it (so the first pages read a few index entries)."""
    pairs: list[tuple[Study, Report | None]] = []
    for segment in segments:
        if needed <= 0:
            break
        rows = session.execute(segment.query.limit(needed).offset(offset)).all()
        pairs += [(row[0], row[1] if len(row) > 1 else None) for row in rows]
        if rows:
            needed -= len(rows)
            offset = 0
        elif offset:
            count = segment.count if segment.count is not None else (
                segment.query.with_only_columns(func.count()).order_by(None))
            offset = max(0, offset - int(session.scalar(count) or 0))
    return pairs


def _with_latest_reports(session: Session, pairs: list[tuple[Study, Report | None]]
                         ) -> list[tuple[Study, Report | None]]:
    """Fill in the latest report of the rows of the last band (not suspected, or none)."""
    missing = [s.id for s, r in pairs if r is None]
    if not missing:
        return pairs
    latest = {r.study_id: r for r in session.scalars(
        select(Report).where(Report.study_id.in_(missing), _is_latest(Report)))}
    return [(s, r if r is not None else latest.get(s.id)) for s, r in pairs]


def _delivery_summary(states: Sequence[str]) -> str:
    """``sent 2/2``, ``sent 1/2, failed``… across a report's destinations."""
    if not states:
        return "-"
    worst = next((s for s in ("failed", "retrying", "pending", "withheld") if s in states), None)
    summary = f"sent {list(states).count('sent')}/{len(states)}"
    return summary if worst is None else f"{summary}, {worst}"


@dataclass
class _PageDetails:
    """What the rows of one page need beyond study and report, in three small queries."""

    first_image: dict[int, tuple[str | None, str | None, str]]
    statuses: dict[int, set[str]]
    thresholds: dict[tuple[int, str], float]
    deliveries: dict[int, list[str]]

    @classmethod
    def load(cls, session: Session, study_ids: list[int],
             reports: list[Report]) -> _PageDetails:
        first: dict[int, tuple[str | None, str | None, str]] = {}
        statuses: dict[int, set[str]] = {}
        if study_ids:
            for study_id, modality, body, ae, status in session.execute(
                    select(Instance.study_id, Instance.modality, Instance.body_part_examined,
                           Instance.calling_ae, Instance.status)
                    .where(Instance.study_id.in_(study_ids)).order_by(Instance.id)):
                first.setdefault(study_id, (modality, body, ae))
                statuses.setdefault(study_id, set()).add(str(status))
        thresholds: dict[tuple[int, str], float] = {}
        deliveries: dict[int, list[str]] = {}
        if reports:
            sources = [r.source_instance_id for r in reports]
            for instance_id, version, threshold in session.execute(
                    select(Score.instance_id, Score.model_version, Score.threshold)
                    .where(Score.instance_id.in_(sources))):
                thresholds[(instance_id, version)] = threshold
            for report_id, state in session.execute(
                    select(Delivery.report_id, Delivery.state)
                    .where(Delivery.report_id.in_([r.id for r in reports]))
                    .order_by(Delivery.id)):
                deliveries.setdefault(report_id, []).append(str(state))
        return cls(first, statuses, thresholds, deliveries)

    def unreported(self, study: Study) -> str:
        """pending, retrying, failed or skipped: why a study has no report yet."""
        if study.report_failed_at is not None:
            return "failed"
        if study.report_error:
            return "retrying"
        seen = self.statuses.get(study.id, set())
        skipped, failed = InstanceStatus.SKIPPED.value, InstanceStatus.FAILED.value
        if seen and seen == {skipped}:
            return skipped
        if seen and seen <= {skipped, failed}:
            return failed
        return PENDING

    def item(self, study: Study, report: Report | None, show_phi: bool) -> WorklistItem:
        modality, body, station = self.first_image.get(study.id, (None, None, None))
        return WorklistItem(
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            study_date=study.study_date,
            received_at=study.first_received_at,
            decision=str(report.decision) if report else self.unreported(study),
            priority=str(report.priority) if report else None,
            probability_mean=report.probability_mean if report else None,
            probability_std=report.probability_std if report else None,
            threshold=self.thresholds.get((report.source_instance_id, report.model_version))
            if report else None,
            model_version=report.model_version if report else None,
            delivery=_delivery_summary(self.deliveries.get(report.id, [])) if report else "-",
            modality=modality, body_part=body, station=station,
            patient_name=study.patient_name if show_phi else None,
            patient_id=study.patient_id if show_phi else None,
        )
