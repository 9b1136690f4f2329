"""Studies and received instances.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("patient_name", sa.String(324), nullable=True),
        sa.Column("study_date", sa.String(8), nullable=True),
        sa.Column("study_description", sa.String(64), nullable=True),
        sa.Column("first_received_at", UTCDateTime(), nullable=False),
        sa.Column("last_received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_study_study_instance_uid")),
    )
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("file_path", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("body_part_examined", sa.String(64), nullable=True),
        sa.Column("view_position", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(255), nullable=True),
        sa.Column("receive_count", sa.Integer(), nullable=False),
        sa.Column("enqueue_count", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_instance_study_id_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instance_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instance_study_id"), "instance", ["study_id"])
    op.create_index("ix_instance_status_received_at", "instance", ["status", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_instance_status_received_at", table_name="instance")
    op.drop_index(op.f("ix_instance_study_id"), table_name="instance")
    op.drop_table("instance")
    op.drop_table("study")
