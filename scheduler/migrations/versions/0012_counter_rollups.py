"""quota status: send counters rolled up by (day, town) and (day, carrier), backfilled

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-26 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_counters_town",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("town_id", sa.String(length=64), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "town_id", name=op.f("pk_send_counters_town")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "send_counters_carrier",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("carrier", sa.String(length=16), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "carrier", name=op.f("pk_send_counters_carrier")),
        sqlite_with_rowid=False,
    )
    # The roll-ups of the counters already kept: quotas of pruned months come from these too.
    op.execute(
        "INSERT INTO send_counters_town (day, town_id, sent, delivered)"
        " SELECT day, town_id, SUM(sent), SUM(delivered) FROM send_counters"
        " GROUP BY day, town_id"
    )
    op.execute(
        "INSERT INTO send_counters_carrier (day, carrier, sent, delivered)"
        " SELECT day, carrier, SUM(sent), SUM(delivered) FROM send_counters"
        " GROUP BY day, carrier"
    )


def downgrade() -> None:
    op.drop_table("send_counters_carrier")
    op.drop_table("send_counters_town")
