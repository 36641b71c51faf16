"""endpoint_health: what the leader's health checks last observed of each compute

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint_health",
        sa.Column("endpoint_id", sa.String(64), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("endpoint_health")
