"""timelines: branch history in the archive

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "timelines",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("branch_id", sa.String(length=64), nullable=False),
        sa.Column("start_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("parent_timeline_id", sa.String(length=64), nullable=True),
        sa.Column("parent_seq", sa.BigInteger(), nullable=True),
        sa.Column("previous_timeline_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timelines")),
    )
    op.create_index("ix_timelines_project_id", "timelines", ["project_id"])
    op.create_index("ix_timelines_branch_id", "timelines", ["branch_id"])
    with op.batch_alter_table("branches") as batch:
        batch.add_column(sa.Column("timeline_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("parent_timestamp", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("parent_lsn", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("branches") as batch:
        batch.drop_column("parent_lsn")
        batch.drop_column("parent_timestamp")
        batch.drop_column("timeline_id")
    op.drop_index("ix_timelines_branch_id", table_name="timelines")
    op.drop_index("ix_timelines_project_id", table_name="timelines")
    op.drop_table("timelines")
