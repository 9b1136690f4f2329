"""Web app: local users, service-account tokens, the audit log and the worklist's indexes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "web_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("can_view_phi", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("password_changed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_user")),
        sa.UniqueConstraint("username", name=op.f("uq_web_user_username")),
    )
    op.create_table(
        "service_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("can_view_phi", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_token")),
        sa.UniqueConstraint("name", name=op.f("uq_service_token_name")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_service_token_token_sha256")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_username"), "audit_log", ["username"])
    op.create_index(op.f("ix_audit_log_study_instance_uid"), "audit_log",
                    ["study_instance_uid"])
    op.create_index("ix_study_first_received_at", "study", ["first_received_at"])
    op.create_index("ix_report_study_id_id", "report", ["study_id", "id"])
    op.create_index("ix_report_decision_probability_mean", "report",
                    ["decision", "probability_mean", "id"])


def downgrade() -> None:
    op.drop_index("ix_report_decision_probability_mean", table_name="report")
    op.drop_index("ix_report_study_id_id", table_name="report")
    op.drop_index("ix_study_first_received_at", table_name="study")
    op.drop_table("audit_log")
    op.drop_table("service_token")
    op.drop_table("web_user")
