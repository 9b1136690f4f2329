"""Typed SQLAlchemy models: studies and the instances received for them.

The worker adds scores, reports and deliveries in later migrations; instances are keyed by an
integer id that those tables reference.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC (the only clock the database sees)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use db.models.utcnow()")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class InstanceStatus(enum.StrEnum):
    """Where an instance is in the triage pipeline."""

    RECEIVED = "received"  # durable and recorded, not yet on the score queue
    QUEUED = "queued"  # published to the score queue
    SCORING = "scoring"  # claimed by a worker
    SCORED = "scored"
    SKIPPED = "skipped"  # not a triage candidate; status_reason says why
    FAILED = "failed"  # could not be scored; status_reason says why


STATUS_LENGTH = 16
UID_LENGTH = 64


class Study(Base):
    """One imaging study, identified by its Study Instance UID."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study", lazy="raise")


class Instance(Base):
    """One received SOP instance: where its file is and what triage did with it."""

    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_status_received_at", "status", "received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    file_path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    content_sha256: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH), default=InstanceStatus.RECEIVED)
    status_reason: Mapped[str | None] = mapped_column(String(255))
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study] = relationship(back_populates="instances", lazy="raise")


# --- Worker results (migration 0002) ------------------------------------------------------------


class DeliveryState(enum.StrEnum):
    """Where a report is in its delivery to one destination."""

    PENDING = "pending"  # queued for delivery, not yet tried
    RETRYING = "retrying"  # tried; a transient problem; will be tried again
    SENT = "sent"  # the destination accepted it
    FAILED = "failed"  # a permanent problem or retries exhausted; last_error says why
    SHADOW = "shadow"  # shadow destination: recorded, deliberately not sent
    WITHHELD = "withheld"  # would lower a HIGH priority already sent there (docs/worker.md)


class ScoreClaim(Base):
    """Which score task (Celery task id) claimed an instance, and when (for take-over)."""

    __tablename__ = "score_claim"

    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), primary_key=True)
    token: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Score(Base):
    """The ensemble's output for one instance's content under one model version."""

    __tablename__ = "score"
    __table_args__ = (
        UniqueConstraint("instance_id", "model_version", "content_sha256",
                         name="uq_score_instance_model_content"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(String(64))
    probability_mean: Mapped[float] = mapped_column(Float)
    probability_std: Mapped[float] = mapped_column(Float)
    fold_probabilities: Mapped[list[float]] = mapped_column(JSON)
    fold_votes: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    latency_ms: Mapped[float] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(16))
    worker_host: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    """One triage SR written for a study: revision ``n`` under one model version."""

    __tablename__ = "report"
    __table_args__ = (
        UniqueConstraint("study_id", "model_version", "revision",
                         name="uq_report_study_model_revision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    priority: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    probability_mean: Mapped[float] = mapped_column(Float)
    probability_std: Mapped[float] = mapped_column(Float)
    source_instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"))
    scored_instance_count: Mapped[int] = mapped_column(Integer)
    sr_study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sr_series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    file_path: Mapped[str] = mapped_column(String(1024))
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("report.id"))
    worker_host: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """The delivery of one report to one destination (``AE@host:port``)."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("report_id", "destination", name="uq_delivery_report_destination"),
        Index("ix_delivery_state_updated_at", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("report.id"), index=True)
    destination: Mapped[str] = mapped_column(String(160))
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(STATUS_LENGTH), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
