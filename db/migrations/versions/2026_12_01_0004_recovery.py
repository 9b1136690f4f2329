"""Recovery: when each study's report and each delivery is due, and why a report failed.

The node's reconciler re-publishes work past these times, so no step depends on a message
the broker may have lost (docs/operations.md, "The reconciler").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("report_due_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("report_generation", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("report_attempts", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("report_error", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("report_failed_at", UTCDateTime(), nullable=True))
        batch.create_index(op.f("ix_study_report_due_at"), ["report_due_at"])
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_delivery_state_next_attempt_at", ["state", "next_attempt_at"])
    # Work an earlier version left in flight is due now: deliveries pending or retrying, and
    # studies with an image in triage and no report yet.
    op.execute("UPDATE delivery SET next_attempt_at = updated_at "
               "WHERE state IN ('pending', 'retrying')")
    op.execute("UPDATE study SET report_due_at = last_received_at "
               "WHERE id NOT IN (SELECT study_id FROM report) AND id IN ("
               "SELECT study_id FROM instance "
               "WHERE status IN ('received', 'queued', 'scoring', 'scored'))")


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index("ix_delivery_state_next_attempt_at")
        batch.drop_column("next_attempt_at")
    with op.batch_alter_table("study") as batch:
        batch.drop_index(op.f("ix_study_report_due_at"))
        for column in ("report_failed_at", "report_error", "report_attempts",
                       "report_generation", "report_due_at"):
            batch.drop_column(column)
