"""dropped_names: roles and databases deleted through the API (what account sync may drop)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dropped_names",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("branch_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["branch_id"], ["branches.id"], name=op.f("fk_dropped_names_branch_id_branches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dropped_names")),
        sa.UniqueConstraint("branch_id", "kind", "name", name="uq_dropped_names_branch_kind_name"),
    )
    op.create_index(
        op.f("ix_dropped_names_branch_id"), "dropped_names", ["branch_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_dropped_names_branch_id"), table_name="dropped_names")
    op.drop_table("dropped_names")
