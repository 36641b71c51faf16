"""usage hours and meter marks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_hours")),
        sa.UniqueConstraint("subject_id", "metric", "hour", name="uq_usage_hours_subject_metric"),
    )
    op.create_index("ix_usage_hours_project_hour", "usage_hours", ["project_id", "hour"])
    op.create_table(
        "meter_marks",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meter_marks")),
    )


def downgrade() -> None:
    op.drop_table("meter_marks")
    op.drop_index("ix_usage_hours_project_hour", table_name="usage_hours")
    op.drop_table("usage_hours")
