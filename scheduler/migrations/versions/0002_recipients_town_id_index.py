"""recipients: an index to page through one town's residents in id order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_recipients_town_id", "recipients", ["town_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_recipients_town_id", table_name="recipients")
