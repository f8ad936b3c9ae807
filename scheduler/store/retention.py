"""Monthly partitions and retention of `messages` and `attempts`.

On PostgreSQL both tables are partitioned by month (declarative range partitioning):
`messages` by `period`, the first day of its occurrence's local month, and `attempts` by
`attempted_at` with the bounds at local midnight of the 1st. A month is `<table>_pYYYY_MM`,
and `<table>_default` takes any row no month partition covers, so an insert never fails. The
service creates months ahead (`ensure_months`); pruning archives a month to gzip'd CSV and
drops its partitions. On SQLite the same columns live in one plain table and pruning deletes
the month's rows.

An archive keeps every column as stored, phone numbers included: it is the office's record of
what it sent to whom, the reason the rows were kept at all. Files are written 0600.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, literal_column, select, text

from scheduler.models import Attempt, Message, MessageState
from scheduler.periods import Month

MESSAGES = "messages"
ATTEMPTS = "attempts"
TABLES: dict[str, Table] = {
    MESSAGES: Message.__table__,  # type: ignore[dict-item]
    ATTEMPTS: Attempt.__table__,  # type: ignore[dict-item]
}
# The column each table is partitioned by on PostgreSQL.
PARTITION_KEY = {MESSAGES: "period", ATTEMPTS: "attempted_at"}
_PARTITION_NAME = re.compile(r"^(messages|attempts)_(p(\d{4})_(\d{2})|default)$")
# Rows deleted per statement when pruning on SQLite (progress is reported between batches).
DELETE_BATCH = 20_000
UNFINISHED = (MessageState.QUEUED, MessageState.SENDING)


def period_of(scheduled_at: dt.datetime, tz: Any) -> dt.date:
    """A message's `period`: the first day of its occurrence's local month. Every message of
    an occurrence shares it, so UNIQUE(occurrence_id, recipient_id, period) is exactly as
    strict as UNIQUE(occurrence_id, recipient_id)."""
    return scheduled_at.astimezone(tz).date().replace(day=1)


def partition_name(table: str, month: Month) -> str:
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def is_partition_name(name: str) -> bool:
    """Partitions and default partitions: Alembic's comparison skips them (they are not in the
    models; see `scheduler.migrations_filter`)."""
    return _PARTITION_NAME.match(name) is not None


def is_partitioned(conn: Connection, table: str) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
    ).scalar()
    return kind == "p"


def _bounds(table: str, month: Month, tz: Any) -> tuple[Any, Any]:
    """The partition key's [lo, hi) for a month, as the database stores it."""
    if table == MESSAGES:
        return month.first_day, month.next.first_day
    lo, hi = month.bounds(tz)
    return (
        lo.astimezone(dt.UTC).replace(tzinfo=None),
        hi.astimezone(dt.UTC).replace(tzinfo=None),
    )


def _lit(value: dt.date) -> str:
    """A bound as SQL text: partition bounds cannot be parameters, and only dates and
    datetimes this module computed reach here."""
    if isinstance(value, dt.datetime):
        return f"'{value.isoformat(sep=' ')}'"
    return f"'{value.isoformat()}'"


def _lock_partitions(conn: Connection) -> None:
    """Serialise partition DDL (the service's daily job, a prune, a migration)."""
    key = zlib.crc32(b"pingan:partitions")
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def month_partitions(conn: Connection, table: str) -> list[Month]:
    """The month partitions of a partitioned table, oldest first."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    ).scalars()
    out = []
    for name in names:
        m = _PARTITION_NAME.match(str(name))
        if m and m.group(3):
            out.append(Month(int(m.group(3)), int(m.group(4))))
    return sorted(out)


def ensure_partition(conn: Connection, table: str, month: Month, tz: Any) -> bool:
    """The month's partition, created if missing; True when created here.

    Rows of that month already in the default partition (an occurrence scheduled further
    ahead than the job creates months) move into the new partition in the same transaction:
    PostgreSQL refuses a partition whose rows sit in the default one.
    """
    name = partition_name(table, month)
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return False
    key = PARTITION_KEY[table]
    lo, hi = _bounds(table, month, tz)
    default = f"{table}_default"
    stray = conn.execute(
        text(f"SELECT count(*) FROM {default} WHERE {key} >= :lo AND {key} < :hi"),
        {"lo": lo, "hi": hi},
    ).scalar_one()
    values = f"FOR VALUES FROM ({_lit(lo)}) TO ({_lit(hi)})"
    if not stray:
        conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF {table} {values}")
        return True
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)")
    conn.execute(
        text(
            f"WITH moved AS (DELETE FROM {default} WHERE {key} >= :lo AND {key} < :hi "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        ),
        {"lo": lo, "hi": hi},
    )
    conn.exec_driver_sql(f"ALTER TABLE {table} ATTACH PARTITION {name} {values}")
    return True


def ensure_months(engine: Engine, today: dt.date, ahead: int, tz: Any) -> list[str]:
    """This month's and the next `ahead` months' partitions of both tables (PostgreSQL only);
    the names created. Each table's months go in one short transaction."""
    created: list[str] = []
    if engine.dialect.name != "postgresql":
        return created
    months = [Month.of(today)]
    for _ in range(ahead):
        months.append(months[-1].next)
    for table in TABLES:
        with engine.begin() as conn:
            if not is_partitioned(conn, table):
                continue
            conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
            _lock_partitions(conn)
            for m in months:
                if ensure_partition(conn, table, m, tz):
                    created.append(partition_name(table, m))
    return created


# --- pruning ----------------------------------------------------------------------------------


class UnfinishedMessages(Exception):
    """A month to prune still has messages queued or being sent."""

    def __init__(self, month: Month, count: int) -> None:
        super().__init__(f"{month}: {count} message(s) still queued or sending")
        self.month = month
        self.count = count


@dataclass
class MonthPruned:
    """What pruning one month did (or, with dry_run, would do)."""

    month: str
    messages: int = 0
    attempts: int = 0
    # "pruned", "would prune", or "skipped" (archived earlier, rows already gone)
    action: str = "pruned"
    archives: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)


def archive_path(archive_dir: Path, table: str, month: Month) -> Path:
    return archive_dir / f"{table}-{month}.csv.gz"


def _where(table: str, month: Month, tz: Any) -> tuple[Any, ...]:
    t = TABLES[table]
    lo, hi = month.bounds(tz)
    if table == MESSAGES:
        return (t.c.period == month.first_day,)
    return (t.c.attempted_at >= lo, t.c.attempted_at < hi)


def count_month(conn: Connection, table: str, month: Month, tz: Any) -> int:
    t = TABLES[table]
    return int(
        conn.execute(
            select(func.count()).select_from(t).where(*_where(table, month, tz))
        ).scalar_one()
    )


def months_before(engine: Engine, before: Month, tz: Any) -> list[Month]:
    """Months earlier than `before` holding rows or a partition, oldest first."""
    found: set[Month] = set()
    with engine.connect() as conn:
        for p in conn.execute(
            select(Message.period).where(Message.period < before.first_day).distinct()
        ).scalars():
            found.add(Month.of(p))
        oldest = conn.execute(
            select(func.min(Attempt.attempted_at)).where(
                Attempt.attempted_at < before.bounds(tz)[0]
            )
        ).scalar()
        if oldest is not None:
            m = Month.of(oldest.astimezone(tz).date())
            while m < before:
                if count_month(conn, ATTEMPTS, m, tz):
                    found.add(m)
                m = m.next
        for table in TABLES:
            if is_partitioned(conn, table):
                found.update(m for m in month_partitions(conn, table) if m < before)
    return sorted(found)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _rows(conn: Connection, table: str, month: Month, tz: Any) -> Iterator[list[str]]:
    t = TABLES[table]
    # On the statement, not the connection: a connection's options stay for what follows.
    result = conn.execute(
        select(*t.c)
        .where(*_where(table, month, tz))
        .order_by(t.c.id)
        .execution_options(yield_per=5_000)
    )
    for row in result:
        yield [_format(v) for v in row]


def _write_archive(conn: Connection, table: str, month: Month, tz: Any, path: Path) -> int:
    """The month's rows to `path` (gzip'd CSV with a header, mode 0600), fsynced before it
    takes its final name; the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older .partial may have been made with other bits
    n = 0
    with os.fdopen(fd, "wb") as raw:
        with gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw, mtime=0) as gz:
            text_out = io.TextIOWrapper(gz, encoding="utf-8", newline="")
            writer = csv.writer(text_out)
            writer.writerow([c.name for c in TABLES[table].c])
            for row in _rows(conn, table, month, tz):
                writer.writerow(row)
                n += 1
            text_out.flush()
            text_out.detach()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return n


def _drop_or_delete(
    conn: Connection,
    table: str,
    month: Month,
    tz: Any,
    partitioned: bool,
    progress: Callable[[str, int], None] | None,
) -> list[str]:
    """The month's rows gone: its partition dropped (PostgreSQL) or deleted in batches.
    Rows of the month in the default partition are deleted too."""
    dropped: list[str] = []
    t = TABLES[table]
    if partitioned:
        name = partition_name(table, month)
        if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
            conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name}")
            conn.exec_driver_sql(f"DROP TABLE {name}")
            dropped.append(name)
    # Batches by id range: the month's ids are read once (every DELETE_BATCH-th kept), so each
    # batch is a primary-key range, not another scan for `period` (unindexed on SQLite).
    starts = [
        row_id
        for i, row_id in enumerate(
            conn.execute(
                select(t.c.id)
                .where(*_where(table, month, tz))
                .order_by(t.c.id)
                .execution_options(yield_per=DELETE_BATCH)
            ).scalars()
        )
        if i % DELETE_BATCH == 0
    ]
    for k, lo in enumerate(starts):
        in_range = [t.c.id >= lo]
        if k + 1 < len(starts):
            in_range.append(t.c.id < starts[k + 1])
        n = conn.execute(t.delete().where(*in_range, *_where(table, month, tz))).rowcount
        if progress is not None and n:
            progress(table, int(n))
    return dropped


def prune_month(
    engine: Engine,
    month: Month,
    *,
    archive_dir: Path,
    tz: Any,
    dry_run: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> MonthPruned:
    """Archive one month's messages and attempts, then drop them.

    The drop runs in one transaction that first takes the month's rows out of other writers'
    reach (a SHARE lock on the month's partitions on PostgreSQL, the write lock on SQLite), so
    the archive holds exactly what is dropped. The files are fsynced before the drop: killed
    before the commit, the rows are still there and the next run writes the archive again;
    killed after, the month is skipped.

    On PostgreSQL the archive is written first without any lock, from one REPEATABLE READ
    snapshot: a province month takes hours to write, and a lock held that long would stall the
    dispatcher (its updates by id reach every partition). Under the lock the month is then
    checked unchanged since that snapshot (the same row counts, and no row version written by a
    transaction the snapshot could not see: `age(xmin)`); if anything changed, the archive is
    written again under the lock.
    """
    snapshot = None
    if engine.dialect.name == "postgresql" and not dry_run:
        snapshot = _archive_from_snapshot(engine, month, tz, archive_dir)
    return _prune_locked(engine, month, archive_dir, tz, dry_run, progress, snapshot)


def _check_finished(conn: Connection, month: Month, tz: Any) -> None:
    unfinished = int(
        conn.execute(
            select(func.count())
            .select_from(Message)
            .where(*_where(MESSAGES, month, tz), Message.state.in_(list(UNFINISHED)))
        ).scalar_one()
    )
    if unfinished:
        raise UnfinishedMessages(month, unfinished)


def _archive_from_snapshot(
    engine: Engine, month: Month, tz: Any, archive_dir: Path
) -> tuple[int, int, int] | None:
    """The month's archives written from one snapshot, no lock taken: (the snapshot's xmin,
    messages, attempts), or None when the month has no rows."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            xmin = int(
                conn.exec_driver_sql(
                    "SELECT txid_snapshot_xmin(txid_current_snapshot())"
                ).scalar_one()
            )
            _check_finished(conn, month, tz)
            counts = count_month(conn, MESSAGES, month, tz), count_month(conn, ATTEMPTS, month, tz)
            if counts == (0, 0):
                return None
            for tbl in TABLES:
                _write_archive(conn, tbl, month, tz, archive_path(archive_dir, tbl, month))
            return (xmin, *counts)
        finally:
            conn.rollback()


def _changed_since(conn: Connection, month: Month, tz: Any, xmin: int) -> bool:
    """Whether any row of the month was written by a transaction at or after `xmin` (the
    oldest transaction a snapshot could not see). Call it holding the month's lock."""
    newer = int(conn.execute(text("SELECT txid_current() - :x"), {"x": xmin}).scalar_one())
    for table in TABLES:
        t = TABLES[table]
        n = conn.execute(
            select(func.count())
            .select_from(t)
            .where(*_where(table, month, tz), func.age(literal_column("xmin")) <= newer)
        ).scalar_one()
        if n:
            return True
    return False


def _prune_locked(
    engine: Engine,
    month: Month,
    archive_dir: Path,
    tz: Any,
    dry_run: bool,
    progress: Callable[[str, int], None] | None,
    snapshot: tuple[int, int, int] | None,
) -> MonthPruned:
    done = MonthPruned(str(month), action="would prune" if dry_run else "pruned")
    paths = {tbl: archive_path(archive_dir, tbl, month) for tbl in TABLES}
    with engine.connect() as conn:
        try:
            partitioned = {tbl: is_partitioned(conn, tbl) for tbl in TABLES}
            if not dry_run:
                _lock_month(conn, month, partitioned)
            _check_finished(conn, month, tz)
            done.messages = count_month(conn, MESSAGES, month, tz)
            done.attempts = count_month(conn, ATTEMPTS, month, tz)
            leftover = [
                partition_name(tbl, month)
                for tbl in TABLES
                if partitioned[tbl] and month in month_partitions(conn, tbl)
            ]
            archived = all(p.exists() for p in paths.values())
            empty = done.messages == 0 and done.attempts == 0
            if empty and archived and not leftover:
                done.action = "skipped"
            if dry_run or done.action == "skipped":
                done.archives = [str(p) for p in paths.values() if p.exists()]
                conn.rollback()
                return done
            current = (
                snapshot is not None
                and snapshot[1:] == (done.messages, done.attempts)
                and not _changed_since(conn, month, tz, snapshot[0])
            )
            if not (empty and archived) and not current:
                for tbl, path in paths.items():
                    _write_archive(conn, tbl, month, tz, path)
            done.archives = [str(p) for p in paths.values()]
            for tbl in TABLES:
                done.partitions_dropped += _drop_or_delete(
                    conn, tbl, month, tz, partitioned[tbl], progress
                )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return done


def _lock_month(conn: Connection, month: Month, partitioned: dict[str, bool]) -> None:
    """Keep other writers off the month's rows until the transaction ends: on PostgreSQL a
    SHARE lock on the month's partitions and the default ones (other months stay writable),
    on SQLite the database's write lock."""
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    conn.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
    _lock_partitions(conn)
    names = []
    for tbl, is_part in partitioned.items():
        if not is_part:
            names.append(tbl)
            continue
        names.append(f"{tbl}_default")
        if month in month_partitions(conn, tbl):
            names.append(partition_name(tbl, month))
    conn.exec_driver_sql(f"LOCK TABLE {', '.join(names)} IN SHARE MODE")
