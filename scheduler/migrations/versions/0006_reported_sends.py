"""reported_sends: counts carriers and towns report for their own sends; case amounts with fen

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-26 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reported_sends",
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject_key", sa.String(length=140), nullable=False),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("town_id", sa.String(length=64), nullable=False),
        sa.Column("village_id", sa.String(length=64), nullable=False),
        sa.Column("carrier", sa.String(length=16), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("messages_sent", sa.BigInteger(), nullable=False),
        sa.Column("people_reached", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("imported_at", scheduler.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "source_kind", "source_id", "subject_kind", "subject_key", "period"
        ),
    )
    with op.batch_alter_table("reported_sends", schema=None) as batch_op:
        batch_op.create_index("ix_reported_sends_last_day", ["last_day"], unique=False)
    # 99,999.50 yuan must stay below the 100,000-yuan rule, so amounts keep their fen.
    with op.batch_alter_table("fraud_cases", schema=None) as batch_op:
        batch_op.alter_column(
            "amount_yuan",
            existing_type=sa.BigInteger(),
            type_=sa.Numeric(precision=14, scale=2),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("fraud_cases", schema=None) as batch_op:
        batch_op.alter_column(
            "amount_yuan",
            existing_type=sa.Numeric(precision=14, scale=2),
            type_=sa.BigInteger(),
            existing_nullable=False,
        )
    with op.batch_alter_table("reported_sends", schema=None) as batch_op:
        batch_op.drop_index("ix_reported_sends_last_day")
    op.drop_table("reported_sends")
