"""Typed SQLAlchemy models: every table, and the vocabulary its status columns hold.

Studies and the instances received for them (migration 0001); the worker's scores, reports and
deliveries (0002); re-scoring runs and their failures (0003). Status, decision and priority
columns are typed by the ``StrEnum`` below and stored as their string values in
``VARCHAR(16)``, so reading one gives the enum member and writing an unknown value fails.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
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
REASON_LENGTH = 255
ERROR_LENGTH = 1024


def status_type(values: type[enum.StrEnum]) -> Enum:
    """A ``VARCHAR(16)`` column holding the values of ``values`` (no CHECK, no native type).

    The stored strings are the enum's values (not its member names), so the columns written
    before they were typed read back unchanged.
    """
    return Enum(values, native_enum=False, create_constraint=False, length=STATUS_LENGTH,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)


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
    # Recovery (migration 0004): the report step as the reconciler sees it. ``report_due_at``
    # is when the report rule must run next (NULL: nothing to do); ``report_generation``
    # counts the events that made it due, so a report task clears it only if nothing new came.
    report_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    report_generation: Mapped[int] = mapped_column(Integer, default=0)
    report_attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed tries since success
    report_error: Mapped[str | None] = mapped_column(String(ERROR_LENGTH))  # the last failure
    report_failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # given up

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
    status: Mapped[InstanceStatus] = mapped_column(status_type(InstanceStatus),
                                                   default=InstanceStatus.RECEIVED)
    status_reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH))
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study] = relationship(back_populates="instances", lazy="raise")


# --- Worker results (migration 0002) ------------------------------------------------------------


class Decision(enum.StrEnum):
    """The triage decision of an image or a study (``worker.score.decision`` decides it)."""

    SUSPECTED = "suspected"
    NOT_SUSPECTED = "not_suspected"
    INDETERMINATE = "indeterminate"
    # the image gate found the image unlike the training data: no verdict, no priority claim
    NOT_ASSESSABLE = "not_assessable"


class Priority(enum.StrEnum):
    """Reading priority derived from the decision."""

    HIGH = "HIGH"
    ROUTINE = "ROUTINE"


class DeliveryState(enum.StrEnum):
    """Where a report is in its delivery to one destination."""

    PENDING = "pending"  # queued for delivery, not yet tried
    RETRYING = "retrying"  # tried; a transient problem; will be tried again
    SENT = "sent"  # the destination accepted it
    FAILED = "failed"  # a permanent problem or retries exhausted; last_error says why
    SHADOW = "shadow"  # shadow destination: recorded, deliberately not sent
    WITHHELD = "withheld"  # would lower a HIGH priority already sent there (docs/worker.md)


class DeliveryItem(enum.StrEnum):
    """What one delivery row carries to its destination (migration 0008)."""

    SR = "sr"  # the triage Structured Report
    IMAGE = "image"  # the result image (Secondary Capture with the heatmap)
    HL7 = "hl7"  # the HL7 v2 ORU^R01 result message to a RIS


class CommitmentState(enum.StrEnum):
    """Storage Commitment of a sent DICOM object at its destination (migration 0008)."""

    REQUESTED = "requested"  # N-ACTION accepted; the N-EVENT-REPORT has not come yet
    COMMITTED = "committed"  # the destination confirmed it keeps the object
    FAILED = "failed"  # the destination reported a failure, or refused the request
    TIMED_OUT = "timed_out"  # no N-EVENT-REPORT within the commitment timeout


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
    decision: Mapped[Decision] = mapped_column(status_type(Decision))
    latency_ms: Mapped[float] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(16))
    worker_host: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Migration 0008: the fold-mean Grad-CAM of the positive class at layer4 (rows of the
    # feature-map grid, each fold's map scaled to [0, 1]) from the scoring pass; the result
    # image draws it without running the models again. ``None`` when the path had none.
    cam: Mapped[list[list[float]] | None] = mapped_column(JSON)


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
    decision: Mapped[Decision] = mapped_column(status_type(Decision))
    priority: Mapped[Priority] = mapped_column(status_type(Priority))
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
    # Migration 0008: the SR's own series number (one per revision), and the result image
    # (Secondary Capture) written with it, when ``TRIAGE_RESULT_IMAGE`` asked for one.
    sr_series_number: Mapped[int | None] = mapped_column(Integer)
    image_series_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    image_sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    image_series_number: Mapped[int | None] = mapped_column(Integer)
    image_file_path: Mapped[str | None] = mapped_column(String(1024))


class Delivery(Base):
    """The delivery of one item of a report (SR, result image, HL7 message) to one
    destination (``AE@host:port``, a STOW-RS URL or an HL7 peer)."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("report_id", "destination", "item",
                         name="uq_delivery_report_destination_item"),
        Index("ix_delivery_state_updated_at", "state", "updated_at"),
        Index("ix_delivery_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_delivery_commitment_uid", "commitment_uid"),
        Index("ix_delivery_commitment_requested_at", "commitment", "commitment_requested_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("report.id"), index=True)
    destination: Mapped[str] = mapped_column(String(160))
    item: Mapped[DeliveryItem] = mapped_column(status_type(DeliveryItem),
                                               default=DeliveryItem.SR,
                                               server_default=DeliveryItem.SR.value)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[DeliveryState] = mapped_column(status_type(DeliveryState),
                                                 default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(ERROR_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Not to be tried before this (migration 0004): the backoff of ``retrying``, or the lease
    # of an attempt in progress; the reconciler re-publishes ``pending``/``retrying`` past it.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Migration 0008: since when the attempts have been failing (cleared once sent), so a
    # destination down for long is reported; and its Storage Commitment, when asked for.
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    commitment: Mapped[CommitmentState | None] = mapped_column(status_type(CommitmentState))
    commitment_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    commitment_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    commitment_updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    commitment_error: Mapped[str | None] = mapped_column(String(ERROR_LENGTH))


# --- Re-scoring runs (migration 0003) -----------------------------------------------------------

MESSAGE_LENGTH = 1024


class RunStatus(enum.StrEnum):
    """Where a re-scoring run is (``rescore_run.status``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every selected instance has a score
    PARTIAL = "partial"  # some instances (or reports) failed; rescore_failure says why
    FAILED = "failed"  # the run stopped on an error; message says which
    INTERRUPTED = "interrupted"  # killed or stopped; the next run continues it


class RescoreRun(Base):
    """One ``cxr-triage rescore`` run: what it selected, scored and changed."""

    __tablename__ = "rescore_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    model_dir: Mapped[str] = mapped_column(String(1024))
    mode: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    status: Mapped[RunStatus] = mapped_column(status_type(RunStatus), default=RunStatus.RUNNING)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    selected: Mapped[int] = mapped_column(Integer, default=0)
    already_scored: Mapped[int] = mapped_column(Integer, default=0)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    indeterminate: Mapped[int] = mapped_column(Integer, default=0)
    decisions_changed: Mapped[int] = mapped_column(Integer, default=0)
    studies_changed: Mapped[int] = mapped_column(Integer, default=0)
    reports_written: Mapped[int] = mapped_column(Integer, default=0)
    mean_probability: Mapped[float | None] = mapped_column(Float)
    indeterminate_rate: Mapped[float | None] = mapped_column(Float)
    mean_shift: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[list[float]] = mapped_column(JSON, default=list)
    message: Mapped[str | None] = mapped_column(String(MESSAGE_LENGTH))


class RescoreFailure(Base):
    """An instance that could not be scored under a model version (one row per content)."""

    __tablename__ = "rescore_failure"
    __table_args__ = (
        UniqueConstraint("instance_id", "model_version", "content_sha256",
                         name="uq_rescore_failure_instance_model_content"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("rescore_run.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"))
    model_version: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(REASON_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Model registry and promotion (migration 0006) ----------------------------------------------

VERSION_LENGTH = 64


class ModelAction(enum.StrEnum):
    """What a ``model_promotion`` row did to the live model."""

    PROMOTE = "promote"  # made ``version`` live
    ROLLBACK = "rollback"  # went back to ``version``, the one live before the last promotion


class ModelVersion(Base):
    """An ensemble imported into the model store (``cxr-triage model import``)."""

    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(VERSION_LENGTH), unique=True)
    label: Mapped[str] = mapped_column(String(255), default="")
    directory: Mapped[str] = mapped_column(String(1024))
    dataset_fingerprint: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)  # ensemble.json as imported
    derived_from: Mapped[str | None] = mapped_column(String(VERSION_LENGTH))  # recalibrated
    imported_by: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelPromotion(Base):
    """Every change of the live model: who, when, why, and whether the gate was forced."""

    __tablename__ = "model_promotion"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(ForeignKey("model_version.version"), index=True)
    action: Mapped[ModelAction] = mapped_column(status_type(ModelAction))
    previous_version: Mapped[str | None] = mapped_column(String(VERSION_LENGTH))
    promoted_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(MESSAGE_LENGTH))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    validation_id: Mapped[int | None] = mapped_column(Integer)  # the passing validation used
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Local labels and validations (migration 0007) ----------------------------------------------


class StudyLabel(Base):
    """Ground truth for a study the node received (``cxr-triage labels import``)."""

    __tablename__ = "study_label"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), unique=True)
    positive: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(64))
    labelled_on: Mapped[dt.date] = mapped_column(Date)
    imported_by: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Validation(Base):
    """One ``cxr-triage validate`` of a model version on local data, and its verdict."""

    __tablename__ = "validation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(VERSION_LENGTH), index=True)
    data_source: Mapped[str] = mapped_column(String(1024))
    passed: Mapped[bool] = mapped_column(Boolean)
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    report_path: Mapped[str] = mapped_column(String(1024))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- Web users, service tokens and the audit log (migration 0005) ------------------------------


class Role(enum.StrEnum):
    """What a web user or service account may open (web/auth.py)."""

    RADIOLOGIST = "radiologist"  # worklist, studies and the API
    ADMIN = "admin"  # also the operations pages, redelivery and the audit log


class WebUser(Base):
    """A local account of the web app; ``password_hash`` is argon2id (argon2-cffi)."""

    __tablename__ = "web_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(status_type(Role))
    can_view_phi: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Sessions issued before this are no longer valid (a new password ends old sessions).
    password_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ServiceToken(Base):
    """A bearer token of a service account (a RIS, a dashboard); only its SHA-256 is kept."""

    __tablename__ = "service_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(status_type(Role))
    can_view_phi: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditLog(Base):
    """Who saw which study's data, when, and how (a page, an image, the API)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), index=True)
    detail: Mapped[str | None] = mapped_column(String(255))
    client: Mapped[str | None] = mapped_column(String(64))


# The web worklist (migration 0005): studies by arrival, and each study's latest report.
Index("ix_study_first_received_at", Study.first_received_at)
Index("ix_report_study_id_id", Report.study_id, Report.id)
Index("ix_report_decision_probability_mean", Report.decision, Report.probability_mean, Report.id)
