"""Result items and delivery channels: the scoring pass's Grad-CAM, the result image,
per-revision SR series, what each delivery carries, how long its destination has been
failing, and Storage Commitment.

Existing deliveries carry the SR (``item = 'sr'``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REPORT_COLUMNS = ("sr_series_number", "image_series_instance_uid", "image_sop_instance_uid",
                   "image_series_number", "image_file_path")
_DELIVERY_COLUMNS = ("failing_since", "commitment", "commitment_uid", "commitment_requested_at",
                     "commitment_updated_at", "commitment_error")


def upgrade() -> None:
    with op.batch_alter_table("score") as batch:
        batch.add_column(sa.Column("cam", sa.JSON(), nullable=True))
    with op.batch_alter_table("report") as batch:
        batch.add_column(sa.Column("sr_series_number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("image_series_instance_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("image_sop_instance_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("image_series_number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("image_file_path", sa.String(1024), nullable=True))
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("item", sa.String(16), nullable=False, server_default="sr"))
        batch.drop_constraint("uq_delivery_report_destination", type_="unique")
        batch.create_unique_constraint("uq_delivery_report_destination_item",
                                       ["report_id", "destination", "item"])
        batch.add_column(sa.Column("failing_since", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("commitment", sa.String(16), nullable=True))
        batch.add_column(sa.Column("commitment_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("commitment_requested_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("commitment_updated_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("commitment_error", sa.String(1024), nullable=True))
        batch.create_index("ix_delivery_commitment_uid", ["commitment_uid"])
        batch.create_index("ix_delivery_commitment_requested_at",
                           ["commitment", "commitment_requested_at"])


def downgrade() -> None:
    op.execute("DELETE FROM delivery WHERE item <> 'sr'")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index("ix_delivery_commitment_requested_at")
        batch.drop_index("ix_delivery_commitment_uid")
        for column in _DELIVERY_COLUMNS:
            batch.drop_column(column)
        batch.drop_constraint("uq_delivery_report_destination_item", type_="unique")
        batch.create_unique_constraint("uq_delivery_report_destination",
                                       ["report_id", "destination"])
        batch.drop_column("item")
    with op.batch_alter_table("report") as batch:
        for column in _REPORT_COLUMNS:
            batch.drop_column(column)
    with op.batch_alter_table("score") as batch:
        batch.drop_column("cam")
