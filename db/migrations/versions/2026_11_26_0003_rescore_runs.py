"""Re-scoring runs and the instances they could not score.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rescore_run() -> None:
    counts = ("selected", "already_scored", "scored", "failed", "flagged", "indeterminate",
              "decisions_changed", "studies_changed", "reports_written")
    op.create_table(
        "rescore_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_dir", sa.String(1024), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in counts),
        sa.Column("mean_probability", sa.Float(), nullable=True),
        sa.Column("indeterminate_rate", sa.Float(), nullable=True),
        sa.Column("mean_shift", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("message", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rescore_run")),
    )
    op.create_index(op.f("ix_rescore_run_model_version"), "rescore_run", ["model_version"])


def _rescore_failure() -> None:
    op.create_table(
        "rescore_failure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["rescore_run.id"],
                                name=op.f("fk_rescore_failure_run_id_rescore_run")),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"],
                                name=op.f("fk_rescore_failure_instance_id_instance")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rescore_failure")),
        sa.UniqueConstraint("instance_id", "model_version", "content_sha256",
                            name="uq_rescore_failure_instance_model_content"),
    )
    op.create_index(op.f("ix_rescore_failure_run_id"), "rescore_failure", ["run_id"])


def upgrade() -> None:
    _rescore_run()
    _rescore_failure()


def downgrade() -> None:
    op.drop_index(op.f("ix_rescore_failure_run_id"), table_name="rescore_failure")
    op.drop_table("rescore_failure")
    op.drop_index(op.f("ix_rescore_run_model_version"), table_name="rescore_run")
    op.drop_table("rescore_run")
