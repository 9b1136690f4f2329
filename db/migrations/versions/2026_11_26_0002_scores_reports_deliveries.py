"""Score claims, scores, reports and deliveries (the worker's results).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _score_claim() -> None:
    op.create_table(
        "score_claim",
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"],
                                name=op.f("fk_score_claim_instance_id_instance")),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_score_claim")),
    )


def _score() -> None:
    op.create_table(
        "score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("probability_mean", sa.Float(), nullable=False),
        sa.Column("probability_std", sa.Float(), nullable=False),
        sa.Column("fold_probabilities", sa.JSON(), nullable=False),
        sa.Column("fold_votes", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("worker_host", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"],
                                name=op.f("fk_score_instance_id_instance")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score")),
        sa.UniqueConstraint("instance_id", "model_version", "content_sha256",
                            name="uq_score_instance_model_content"),
    )
    op.create_index(op.f("ix_score_instance_id"), "score", ["instance_id"])


def _report() -> None:
    op.create_table(
        "report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("probability_mean", sa.Float(), nullable=False),
        sa.Column("probability_std", sa.Float(), nullable=False),
        sa.Column("source_instance_id", sa.Integer(), nullable=False),
        sa.Column("scored_instance_count", sa.Integer(), nullable=False),
        sa.Column("sr_study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sr_series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("file_path", sa.String(1024), nullable=False),
        sa.Column("predecessor_id", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"], name=op.f("fk_report_study_id_study")),
        sa.ForeignKeyConstraint(["source_instance_id"], ["instance.id"],
                                name=op.f("fk_report_source_instance_id_instance")),
        sa.ForeignKeyConstraint(["predecessor_id"], ["report.id"],
                                name=op.f("fk_report_predecessor_id_report")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report")),
        sa.UniqueConstraint("study_id", "model_version", "revision",
                            name="uq_report_study_model_revision"),
        sa.UniqueConstraint("sr_sop_instance_uid", name=op.f("uq_report_sr_sop_instance_uid")),
    )
    op.create_index(op.f("ix_report_study_id"), "report", ["study_id"])


def _delivery() -> None:
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(160), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(1024), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["report_id"], ["report.id"],
                                name=op.f("fk_delivery_report_id_report")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery")),
        sa.UniqueConstraint("report_id", "destination", name="uq_delivery_report_destination"),
    )
    op.create_index(op.f("ix_delivery_report_id"), "delivery", ["report_id"])
    op.create_index("ix_delivery_state_updated_at", "delivery", ["state", "updated_at"])


def upgrade() -> None:
    _score_claim()
    _score()
    _report()
    _delivery()


def downgrade() -> None:
    op.drop_index("ix_delivery_state_updated_at", table_name="delivery")
    op.drop_index(op.f("ix_delivery_report_id"), table_name="delivery")
    op.drop_table("delivery")
    op.drop_index(op.f("ix_report_study_id"), table_name="report")
    op.drop_table("report")
    op.drop_index(op.f("ix_score_instance_id"), table_name="score")
    op.drop_table("score")
    op.drop_table("score_claim")
