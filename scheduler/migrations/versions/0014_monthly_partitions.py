"""province scale: messages.period; messages and attempts partitioned by month on PostgreSQL

Every message gets `period`, the first day of its occurrence's local month, and the
exactly-once key becomes UNIQUE(occurrence_id, recipient_id, period): PostgreSQL requires the
partition key in every unique key, and since `period` is a function of the occurrence the key
is as strict as before. On PostgreSQL both tables are rebuilt as range-partitioned tables
(messages by period, attempts by attempted_at; primary keys (id, period) and
(id, attempted_at)) with a partition per month holding rows, this month's and next month's,
and a default partition, and the rows are copied over. Columns are copied with
`CREATE TABLE … (LIKE …)`, so earlier migrations' column changes carry over as they are.
SQLite keeps one table with the same columns.

Revision ID: 0014
Revises: 0010
Create Date: 2026-11-26 03:00:00
"""

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

from scheduler.periods import Month
from scheduler.store import retention

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tz() -> ZoneInfo:
    """The service's time zone (a month is a local month); Asia/Shanghai unless configured."""
    name = op.get_context().config.attributes.get("timezone") if op.get_context().config else None
    if not name:
        try:
            from scheduler.settings import load_settings

            name = load_settings().timezone
        except Exception:
            name = "Asia/Shanghai"
    return ZoneInfo(name)


def _fill_periods(tz: ZoneInfo) -> set[dt.date]:
    """Set `period` on existing messages, one UPDATE per occurrence; the periods used."""
    conn = op.get_bind()
    used: set[dt.date] = set()
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT o.id, o.scheduled_at FROM occurrences o "
            "JOIN messages m ON m.occurrence_id = o.id"
        )
    ).all()
    for occ_id, scheduled_at in rows:
        # Stored as naive UTC (a timestamp on PostgreSQL, ISO text on SQLite).
        at = (
            scheduled_at
            if isinstance(scheduled_at, dt.datetime)
            else dt.datetime.fromisoformat(str(scheduled_at))
        )
        period = retention.period_of(at.replace(tzinfo=dt.UTC), tz)
        used.add(period)
        conn.execute(
            sa.text("UPDATE messages SET period = :p WHERE occurrence_id = :o"),
            {"p": period.isoformat(), "o": occ_id},
        )
    return used


def _attempt_months(tz: ZoneInfo) -> set[Month]:
    conn = op.get_bind()
    months: set[Month] = set()
    bounds = conn.execute(
        sa.text("SELECT min(attempted_at), max(attempted_at) FROM attempts")
    ).one()
    if bounds[0] is None:
        return months
    m = Month.of(bounds[0].replace(tzinfo=dt.UTC).astimezone(tz).date())
    last = Month.of(bounds[1].replace(tzinfo=dt.UTC).astimezone(tz).date())
    while m <= last:
        months.add(m)
        m = m.next
    return months


def _partition_pg(table: str, key: str, pk: str, months: set[Month], tz: ZoneInfo) -> None:
    """Rebuild `table` as a table partitioned by month of `key`, rows copied over."""
    conn = op.get_bind()
    old = f"{table}_pre0014"
    # Free the names (indexes and constraints move with a renamed table) for the new table.
    for (name,) in conn.execute(
        sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = :t "
            "AND schemaname = current_schema()"
        ),
        {"t": table},
    ).all():
        op.execute(f'ALTER INDEX "{name}" RENAME TO "{name}_pre0014"')
    for (name,) in conn.execute(
        sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) AND contype = 'f'"
        ),
        {"t": table},
    ).all():
        op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{name}" TO "{name}_pre0014"')
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS, "
        f"CONSTRAINT pk_{table} PRIMARY KEY ({pk})) PARTITION BY RANGE ({key})"
    )
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    for m in sorted(months):
        retention.ensure_partition(conn, table, m, tz)


def upgrade() -> None:
    tz = _tz()
    pg = op.get_bind().dialect.name == "postgresql"
    op.add_column("messages", sa.Column("period", sa.Date(), nullable=True))
    periods = _fill_periods(tz)
    this_month = Month.of(dt.datetime.now(tz).date())
    ahead = {this_month, this_month.next}
    if not pg:
        with op.batch_alter_table("messages", recreate="always") as batch_op:
            batch_op.alter_column("period", existing_type=sa.Date(), nullable=False)
            batch_op.drop_constraint("uq_messages_occurrence_id", type_="unique")
            batch_op.create_unique_constraint(
                "uq_messages_occurrence_id", ["occurrence_id", "recipient_id", "period"]
            )
        return
    op.execute("ALTER TABLE messages ALTER COLUMN period SET NOT NULL")
    op.drop_constraint("uq_messages_occurrence_id", "messages", type_="unique")
    _partition_pg("messages", "period", "id, period", {Month.of(p) for p in periods} | ahead, tz)
    op.execute("INSERT INTO messages SELECT * FROM messages_pre0014")
    op.execute("DROP TABLE messages_pre0014")
    op.create_unique_constraint(
        "uq_messages_occurrence_id", "messages", ["occurrence_id", "recipient_id", "period"]
    )
    op.create_foreign_key(
        "fk_messages_occurrence_id_occurrences",
        "messages",
        "occurrences",
        ["occurrence_id"],
        ["id"],
    )
    op.create_foreign_key(
        "fk_messages_body_id_message_bodies", "messages", "message_bodies", ["body_id"], ["id"]
    )
    op.create_index("ix_messages_claim", "messages", ["state", "rank", "id"])
    op.create_index("ix_messages_recipient_queued", "messages", ["recipient_id", "queued_at"])
    op.create_index("ix_messages_provider_message_id", "messages", ["provider_message_id"])
    op.create_index("ix_messages_sent_town", "messages", ["sent_at", "town_id"])

    months = _attempt_months(tz)
    _partition_pg("attempts", "attempted_at", "id, attempted_at", months | ahead, tz)
    op.execute("INSERT INTO attempts SELECT * FROM attempts_pre0014")
    op.execute("DROP TABLE attempts_pre0014")
    op.create_index("ix_attempts_message_id", "attempts", ["message_id"])


def downgrade() -> None:
    raise NotImplementedError("0014 (monthly partitions) has no downgrade; restore a backup")
