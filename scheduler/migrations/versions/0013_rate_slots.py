"""dispatch: rate limits shared by dispatcher processes (rate_slots)

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-26 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_slots",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("second", sa.BigInteger(), nullable=False),
        sa.Column("taken", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", "second", name=op.f("pk_rate_slots")),
    )


def downgrade() -> None:
    op.drop_table("rate_slots")
