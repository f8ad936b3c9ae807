"""gateway templates: a body's template-code parameters; error codes up to 64 characters

Domestic gateways (aliyun, tencent) send a registered template code and parameters instead
of a text, and their error codes (isv.BUSINESS_LIMIT_CONTROL, …) are longer than Twilio's.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WIDENED = ("messages", "attempts", "pending_statuses")


def upgrade() -> None:
    with op.batch_alter_table("message_bodies") as batch:
        batch.add_column(sa.Column("params", sa.Text(), nullable=True))
    for table in _WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "error_code",
                existing_type=sa.String(length=16),
                type_=sa.String(length=64),
                existing_nullable=True,
            )


def downgrade() -> None:
    for table in _WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "error_code",
                existing_type=sa.String(length=64),
                type_=sa.String(length=16),
                existing_nullable=True,
            )
    with op.batch_alter_table("message_bodies") as batch:
        batch.drop_column("params")
