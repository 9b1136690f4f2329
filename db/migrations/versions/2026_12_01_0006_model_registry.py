"""Model registry: the imported model versions and the history of the live one.

``model_promotion`` holds every promotion and rollback (who, when, why, forced or not); the
live model is the one its history leaves on top (``db.registry.live_version``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("directory", sa.String(1024), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(64), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("derived_from", sa.String(64), nullable=True),
        sa.Column("imported_by", sa.String(64), nullable=False),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("version", name=op.f("uq_model_version_version")),
    )
    op.create_table(
        "model_promotion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("promoted_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("validation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["model_version.version"],
                                name=op.f("fk_model_promotion_version_model_version")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_promotion")),
    )
    op.create_index(op.f("ix_model_promotion_version"), "model_promotion", ["version"])


def downgrade() -> None:
    op.drop_index(op.f("ix_model_promotion_version"), table_name="model_promotion")
    op.drop_table("model_promotion")
    op.drop_table("model_version")
