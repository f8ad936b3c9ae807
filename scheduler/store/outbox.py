"""The outbox: occurrences, rendered bodies and queued messages.

Expansion writes here chunk by chunk; each chunk and the occurrence's cursor commit together,
so an expansion killed at any point resumes after the last committed recipient.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from scheduler.db import db_time_cache, executemany, transaction
from scheduler.models import (
    Message,
    MessageBody,
    MessageState,
    Occurrence,
    OccurrenceState,
    OptOut,
    Recipient,
)
from scheduler.store.locks import lock_weekly_cap


def _insert(engine_or_session: Engine | Session, table: Any) -> Any:
    bind = (
        engine_or_session.get_bind()
        if isinstance(engine_or_session, Session)
        else engine_or_session
    )
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert(table)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


class RecipientRow(NamedTuple):
    id: int
    phone: str
    name: str | None
    town_id: str
    village_id: str
    carrier: str
    residence: str | None
    segments: tuple[str, ...]
    opted_out: bool


def get_or_create_occurrence(
    engine: Engine,
    *,
    campaign: str,
    scheduled_at: dt.datetime,
    kind: str,
    channel: str,
    priority: int,
    target: dict[str, Any] | None = None,
    now: dt.datetime,
) -> tuple[Occurrence, bool]:
    """The occurrence for (campaign, scheduled_at), created if new; True when created here."""
    with transaction(engine) as s:
        stmt = (
            _insert(s, Occurrence)
            .values(
                campaign=campaign,
                scheduled_at=scheduled_at,
                kind=kind,
                channel=channel,
                priority=priority,
                target=target or {},
                state=OccurrenceState.EXPANDING,
                paused=False,
                queued=0,
                excluded={},
                cursor=0,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["campaign", "scheduled_at"])
        )
        created = _rowcount(s.execute(stmt)) == 1
        occ = s.scalars(
            select(Occurrence).where(
                Occurrence.campaign == campaign, Occurrence.scheduled_at == scheduled_at
            )
        ).one()
    return occ, created


def get_occurrence(engine: Engine, occurrence_id: int) -> Occurrence | None:
    with Session(engine) as s:
        return s.get(Occurrence, occurrence_id)


def find_occurrence(engine: Engine, campaign: str, scheduled_at: dt.datetime) -> Occurrence | None:
    with Session(engine) as s:
        return s.scalars(
            select(Occurrence).where(
                Occurrence.campaign == campaign, Occurrence.scheduled_at == scheduled_at
            )
        ).one_or_none()


def list_occurrences(
    engine: Engine, *, campaign: str | None = None, limit: int = 200
) -> list[Occurrence]:
    with Session(engine) as s:
        q = select(Occurrence).order_by(Occurrence.scheduled_at.desc(), Occurrence.id.desc())
        if campaign:
            q = q.where(
                (Occurrence.campaign == campaign) | Occurrence.campaign.like(f"{campaign}:%")
            )
        return list(s.scalars(q.limit(limit)))


def last_occurrences(engine: Engine) -> dict[str, Occurrence]:
    """The latest occurrence of each campaign key."""
    with Session(engine) as s:
        latest = (
            select(Occurrence.campaign, func.max(Occurrence.scheduled_at).label("at"))
            .group_by(Occurrence.campaign)
            .subquery()
        )
        rows = s.scalars(
            select(Occurrence).join(
                latest,
                and_(
                    Occurrence.campaign == latest.c.campaign, Occurrence.scheduled_at == latest.c.at
                ),
            )
        )
        return {o.campaign: o for o in rows}


def set_occurrence_state(
    engine: Engine,
    occurrence_id: int,
    state: OccurrenceState,
    *,
    error: str | None = None,
    now: dt.datetime,
    queued: int | None = None,
) -> None:
    values: dict[str, Any] = {"state": state, "error": error}
    if state in (OccurrenceState.READY, OccurrenceState.FAILED) and queued is not None:
        values["expanded_at"] = now
    if state in (OccurrenceState.DONE, OccurrenceState.FAILED):
        values["finished_at"] = now
    if queued is not None:
        values["queued"] = queued
    with transaction(engine) as s:
        s.execute(update(Occurrence).where(Occurrence.id == occurrence_id).values(**values))


def set_paused(engine: Engine, occurrence_id: int, paused: bool) -> bool:
    with transaction(engine) as s:
        result = s.execute(
            update(Occurrence).where(Occurrence.id == occurrence_id).values(paused=paused)
        )
        return _rowcount(result) == 1


@functools.lru_cache(maxsize=1024)
def segments_of(stored: str | None) -> tuple[str, ...]:
    """A recipient's `;`-separated segments; a list shares a handful of distinct values."""
    return tuple(x for x in (stored or "").split(";") if x)


def iter_recipient_batches(
    engine: Engine,
    *,
    after_id: int,
    batch_size: int,
    town_id: str | None = None,
    village_id: str | None = None,
) -> Iterator[list[RecipientRow]]:
    """Recipients in id order (all, or one town's or village's), in keyset-paged batches,
    each flagged if opted out.

    Each batch is its own short read, so memory stays flat and writers are not blocked.
    """
    cursor = after_id
    q = (
        select(
            Recipient.id,
            Recipient.phone,
            Recipient.name,
            Recipient.town_id,
            Recipient.village_id,
            Recipient.carrier,
            Recipient.residence,
            Recipient.segments,
            OptOut.phone.is_not(None),
        )
        .outerjoin(OptOut, OptOut.phone == Recipient.phone)
        .order_by(Recipient.id)
    )
    if town_id is not None:
        q = q.where(Recipient.town_id == town_id)
    if village_id is not None:
        q = q.where(Recipient.village_id == village_id)
    while True:
        with engine.connect() as conn:
            rows = conn.execute(q.where(Recipient.id > cursor).limit(batch_size)).all()
        if not rows:
            return
        yield [
            RecipientRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], segments_of(r[7]), bool(r[8]))
            for r in rows
        ]
        cursor = rows[-1][0]


_PAGE_SQL = (
    "SELECT r.id, r.phone, r.name, r.town_id, r.village_id, r.carrier, r.residence, "
    "r.segments, o.phone IS NOT NULL FROM recipients r "
    "LEFT OUTER JOIN opt_outs o ON o.phone = r.phone WHERE r.id > ?{where} "
    "ORDER BY r.id LIMIT ?"
)


def iter_recipient_pages(
    engine: Engine,
    *,
    after_id: int,
    batch_size: int,
    town_id: str | None = None,
    village_id: str | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """`iter_recipient_batches` as plain DBAPI tuples, segments left as stored.

    Expansion's hot path: SQLAlchemy's row processing and building a NamedTuple per resident
    were a third of expanding a million; the raw cursor hands back tuples the driver built.
    Columns: id, phone, name, town_id, village_id, carrier, residence, segments, opted out.
    """
    where = ""
    extra: list[Any] = []
    if town_id is not None:
        where += " AND r.town_id = ?"
        extra.append(town_id)
    if village_id is not None:
        where += " AND r.village_id = ?"
        extra.append(village_id)
    sql = _PAGE_SQL.format(where=where)
    if engine.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    cursor = after_id
    while True:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql, (cursor, *extra, batch_size))
            rows: list[tuple[Any, ...]] = list(cur.fetchall())
            cur.close()
            raw.commit()
        finally:
            raw.close()
        if not rows:
            return
        yield rows
        cursor = rows[-1][0]


def ensure_body(
    engine: Engine,
    *,
    text: str,
    template_name: str,
    template_hash: str,
    chars: int,
    segments: int,
    params: str | None = None,
) -> int:
    """The id of the stored body with this text, provenance and gateway parameters (JSON,
    see scheduler.gateway_templates), stored if new."""
    key = f"{template_name}\0{template_hash}\0{text}"
    if params is not None:
        # Bodies stored before gateway parameters existed keep their digests.
        key += f"\0{params}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    with transaction(engine) as s:
        s.execute(
            _insert(s, MessageBody)
            .values(
                digest=digest,
                text=text,
                template_name=template_name,
                template_hash=template_hash,
                chars=chars,
                segments=segments,
                params=params,
            )
            .on_conflict_do_nothing(index_elements=["digest"])
        )
        return s.scalars(select(MessageBody.id).where(MessageBody.digest == digest)).one()


def sms_occurrences_between(
    engine: Engine, start: dt.datetime, end: dt.datetime, *, exclude: int
) -> list[int]:
    """SMS occurrences scheduled in [start, end): the per-resident cap counts their messages."""
    with Session(engine) as s:
        return _sms_occurrences_between(s, start, end, exclude=exclude)


def _sms_occurrences_between(
    s: Session, start: dt.datetime, end: dt.datetime, *, exclude: int
) -> list[int]:
    return list(
        s.scalars(
            select(Occurrence.id).where(
                Occurrence.channel == "sms",
                Occurrence.scheduled_at >= start,
                Occurrence.scheduled_at < end,
                Occurrence.id != exclude,
            )
        )
    )


def messages_per_recipient(
    engine: Engine, occurrence_ids: Sequence[int], lo: int, hi: int
) -> dict[int, int]:
    """Messages (not cancelled) of these occurrences per recipient with id in [lo, hi]."""
    with Session(engine) as s:
        return _messages_per_recipient(s, occurrence_ids, lo, hi)


def _messages_per_recipient(
    s: Session, occurrence_ids: Sequence[int], lo: int, hi: int
) -> dict[int, int]:
    if not occurrence_ids:
        return {}
    rows = s.execute(
        select(Message.recipient_id, func.count())
        .where(
            Message.occurrence_id.in_(occurrence_ids),
            Message.recipient_id.between(lo, hi),
            Message.state != MessageState.CANCELLED,
        )
        .group_by(Message.recipient_id)
    ).all()
    return {r[0]: r[1] for r in rows}


def recipients_messaged(
    engine: Engine, *, town_id: str, start: dt.datetime, end: dt.datetime, lo: int, hi: int
) -> set[int]:
    """Recipients of a town with a message queued or sent in [start, end) (for top-ups)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Message.recipient_id)
            .join(Occurrence, Occurrence.id == Message.occurrence_id)
            .where(
                Message.town_id == town_id,
                Message.recipient_id.between(lo, hi),
                Occurrence.scheduled_at >= start,
                Occurrence.scheduled_at < end,
                Message.state != MessageState.CANCELLED,
            )
            .distinct()
        ).all()
    return {r[0] for r in rows}


class QueuedMessage(NamedTuple):
    occurrence_id: int
    recipient_id: int
    phone: str
    town_id: str
    village_id: str
    carrier: str
    body_id: int
    segments: int
    rank: int
    queued_at: dt.datetime
    # Not before this (an alert expanded ahead of the next allowed sending hour waits).
    next_attempt_at: dt.datetime


# The columns a queued message is written with: QueuedMessage's fields in order, then state,
# attempts and period. The one list the executemany, the COPY and the INSERT … SELECT below
# share. `period` (the occurrence's month, one value per chunk) goes in as a literal written
# by `_period_sql`, so the rows need no extra column.
QUEUED_COLUMNS = (*QueuedMessage._fields, "state", "attempts", "period")
_QUEUED_LIST = ", ".join(QUEUED_COLUMNS)
# What a new message's state and attempts are, as SQL and as COPY values.
_NEW_STATE_SQL = "'queued', 0"
_NEW_STATE = ("queued", 0)
_INSERT_QUEUED = (
    f"INSERT INTO messages ({_QUEUED_LIST}) "
    f"VALUES ({', '.join(['?'] * len(QueuedMessage._fields))}, {_NEW_STATE_SQL}, {{period}}) "
    "ON CONFLICT (occurrence_id, recipient_id, period) DO NOTHING"
)


def _period_sql(period: dt.date) -> str:
    """A message period as SQL text: a date this code computed, never user input."""
    assert type(period) is dt.date
    return f"'{period.isoformat()}'"


_CHECKPOINT_PAGES = 10_000


def _tune_chunk_transaction(s: Session) -> None:
    """On SQLite, checkpoint the WAL every ~40 MB, not every 4 MB: each checkpoint syncs the
    database file, and a million-message expansion commits two hundred chunks."""
    conn = s.connection()
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")


# Exclusion reasons decided while the chunk holds the weekly-cap lock.
OVER_CAP = "over_cap"
OVER_LIMIT = "over_limit"


class WeeklyCap(NamedTuple):
    """At most `cap` SMS per resident among SMS occurrences scheduled in [start, end)."""

    start: dt.datetime
    end: dt.datetime
    cap: int


class ChunkWritten(NamedTuple):
    written: int
    excluded: dict[str, int]
    # Another expansion of the same occurrence moved its cursor: nothing was written.
    stale: bool = False


def write_capped_chunk(
    engine: Engine,
    occurrence_id: int,
    rows: Sequence[QueuedMessage],
    *,
    cap: WeeklyCap,
    expect_cursor: int,
    cursor: int,
    excluded: dict[str, int],
    period: dt.date,
    room: int | None = None,
) -> ChunkWritten:
    """Queue one chunk within the weekly cap and advance the occurrence, in one transaction.

    The transaction holds the week's cap lock (`locks.lock_weekly_cap`) from before it counts
    each resident's messages until it commits the new ones, so expansions running at once
    (a case alert during the weekly send, two processes) cannot both see a resident under the
    cap. Rows whose resident is at the cap are dropped as OVER_CAP; with `room`, rows beyond
    that many are dropped as OVER_LIMIT. If the occurrence's cursor is no longer
    `expect_cursor` (another process expanded this chunk), nothing is written.
    """
    t = db_time_cache(engine.dialect.name)
    stored = [(*r[:9], t(r.queued_at), t(r.next_attempt_at)) for r in rows]
    return write_capped_rows(
        engine,
        occurrence_id,
        stored,
        cap=cap,
        expect_cursor=expect_cursor,
        cursor=cursor,
        excluded=excluded,
        period=period,
        room=room,
    )


def write_capped_rows(
    engine: Engine,
    occurrence_id: int,
    rows: Sequence[tuple[Any, ...]],
    *,
    cap: WeeklyCap,
    expect_cursor: int,
    cursor: int,
    excluded: dict[str, int],
    period: dt.date,
    room: int | None = None,
) -> ChunkWritten:
    """`write_capped_chunk` for rows already in storage form, in `QueuedMessage`'s column
    order with both times converted by `db_time_cache`: expansion builds each tuple once.

    On PostgreSQL the rows go in through COPY: the transaction holds the week's cap lock and
    has just checked the cursor, so no other expansion can be writing this chunk, and a
    conflict (which cannot happen) would fail the chunk rather than duplicate a message.
    """
    with transaction(engine) as s:
        lock_weekly_cap(s, cap.start.date())
        _tune_chunk_transaction(s)
        current = s.scalar(select(Occurrence.cursor).where(Occurrence.id == occurrence_id))
        if current != expect_cursor:
            return ChunkWritten(0, dict(excluded), stale=True)
        counts: dict[int, int] = {}
        if rows:
            others = _sms_occurrences_between(s, cap.start, cap.end, exclude=occurrence_id)
            counts = _messages_per_recipient(
                s, others, min(r[1] for r in rows), max(r[1] for r in rows)
            )
        total = dict(excluded)
        keep: Sequence[tuple[Any, ...]] = rows
        if counts or (room is not None and room < len(rows)):
            kept: list[tuple[Any, ...]] = []
            for r in rows:
                reason = None
                if counts.get(r[1], 0) >= cap.cap:
                    reason = OVER_CAP
                elif room is not None and len(kept) >= room:
                    reason = OVER_LIMIT
                if reason is None:
                    kept.append(r)
                else:
                    total[reason] = total.get(reason, 0) + 1
            keep = kept
        if keep and s.get_bind().dialect.name == "postgresql":
            _copy_queued(s, keep, period)
        else:
            executemany(s, _INSERT_QUEUED.format(period=_period_sql(period)), keep)
        s.execute(
            update(Occurrence)
            .where(Occurrence.id == occurrence_id)
            .values(cursor=cursor, excluded=total)
        )
    return ChunkWritten(len(keep), total)


_COPY_QUEUED = f"COPY messages ({_QUEUED_LIST}) FROM STDIN"


def _copy_queued(s: Session, rows: Sequence[tuple[Any, ...]], period: dt.date) -> None:
    """COPY a chunk into messages inside the session's transaction (PostgreSQL's ceiling)."""
    raw = s.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(_COPY_QUEUED) as copy:
        for r in rows:
            copy.write_row((*r, *_NEW_STATE, period))


class ChunkSummary(NamedTuple):
    """One keyset chunk of recipients, counted per (town, village) instead of read row by row."""

    hi: int
    read: int
    # (town_id, village_id, residents, of whom opted out)
    groups: list[tuple[str, str, int, int]]


def summarise_chunk(engine: Engine, *, after_id: int, batch_size: int) -> ChunkSummary | None:
    """The next chunk's last id and its residents per place, or None when none are left."""
    p = "?" if engine.dialect.name == "sqlite" else "%s"
    with engine.connect() as conn:
        hi = conn.exec_driver_sql(
            f"SELECT max(id) FROM (SELECT id FROM recipients WHERE id > {p} ORDER BY id "
            f"LIMIT {p}) page",
            (after_id, batch_size),
        ).scalar()
        if hi is None:
            return None
        groups = conn.exec_driver_sql(
            "SELECT r.town_id, r.village_id, count(*), count(o.phone) FROM recipients r "
            f"LEFT OUTER JOIN opt_outs o ON o.phone = r.phone WHERE r.id > {p} AND r.id <= {p} "
            "GROUP BY r.town_id, r.village_id",
            (after_id, hi),
        ).all()
    rows = [(str(g[0]), str(g[1]), int(g[2]), int(g[3])) for g in groups]
    return ChunkSummary(int(hi), sum(g[2] for g in rows), rows)


def refresh_planner_stats(engine: Engine) -> bool:
    """On PostgreSQL, ANALYZE recipients and opt_outs when their statistics are missing or
    stale; True when it did. Without them the planner takes a freshly loaded table for a few
    dozen rows and runs `write_capped_select` as an index scan of each place's residents
    filtered to the chunk (94 ms a chunk of 5,000 at 100,000 residents, growing with the
    table) instead of the chunk's id range hashed against its places (2.5 ms). ANALYZE reads
    a fixed sample and blocks no reader or writer."""
    if engine.dialect.name != "postgresql":
        return False
    stale: list[str] = []
    with engine.connect() as conn:
        for table in ("recipients", "opt_outs"):
            row = conn.exec_driver_sql(
                "SELECT c.reltuples, coalesce(s.n_mod_since_analyze, 0) FROM pg_class c "
                "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                "WHERE c.oid = to_regclass(%s)",
                (table,),
            ).first()
            if row is None:
                continue
            tuples, modified = float(row[0]), int(row[1])
            # reltuples is -1 until a table is first analyzed (PostgreSQL 14 and later).
            if tuples < 0 or modified > max(1000.0, 0.2 * tuples):
                stale.append(table)
    if not stale:
        return False
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in stale:
            conn.exec_driver_sql(f"ANALYZE {table}")
    return True


def write_capped_select(
    engine: Engine,
    occurrence_id: int,
    *,
    bodies: Sequence[tuple[str, str, int, int]],
    eligible: int,
    rank: int,
    queued_at: Any,
    not_before: Any,
    cap: WeeklyCap,
    expect_cursor: int,
    cursor: int,
    excluded: dict[str, int],
    period: dt.date,
) -> ChunkWritten:
    """`write_capped_rows` as one `INSERT … SELECT` for a template with no per-recipient
    variable: the database reads, filters and writes the chunk without a row crossing into
    Python. `bodies` are (town, village, body id, segments) for every place of the chunk
    whose text rendered; residents opted out, elsewhere or at the cap are not selected, and
    `eligible` (the chunk's residents in those places, not opted out) minus the rows written
    is counted OVER_CAP. The same transaction, lock and cursor check as `write_capped_rows`.
    """
    pg = engine.dialect.name == "postgresql"
    p = "%s" if pg else "?"
    with transaction(engine) as s:
        lock_weekly_cap(s, cap.start.date())
        _tune_chunk_transaction(s)
        current = s.scalar(select(Occurrence.cursor).where(Occurrence.id == occurrence_id))
        if current != expect_cursor:
            return ChunkWritten(0, dict(excluded), stale=True)
        total = dict(excluded)
        written = 0
        if bodies:
            others = _sms_occurrences_between(s, cap.start, cap.end, exclude=occurrence_id)
            places = ", ".join(
                [f"({p}, {p}, CAST({p} AS INTEGER), CAST({p} AS INTEGER))"] * len(bodies)
            )
            capped = ""
            params: list[Any] = [x for b in bodies for x in b]
            params += [occurrence_id, rank, queued_at, not_before, expect_cursor, cursor]
            if others:
                capped = (
                    " AND (SELECT count(*) FROM messages m WHERE m.recipient_id = r.id"
                    f" AND m.occurrence_id IN ({', '.join([p] * len(others))})"
                    f" AND m.state != 'cancelled') < {p}"
                )
                params += [*others, cap.cap]
            sql = (
                f"WITH b(town_id, village_id, body_id, segments) AS (VALUES {places}) "
                f"INSERT INTO messages ({_QUEUED_LIST}) "
                f"SELECT {p}, r.id, r.phone, r.town_id, r.village_id, r.carrier, b.body_id, "
                f"b.segments, {p}, {p}, {p}, {_NEW_STATE_SQL}, {_period_sql(period)} "
                "FROM recipients r "
                "JOIN b ON b.town_id = r.town_id AND b.village_id = r.village_id "
                f"WHERE r.id > {p} AND r.id <= {p} "
                "AND NOT EXISTS (SELECT 1 FROM opt_outs o WHERE o.phone = r.phone)"
                f"{capped} ORDER BY r.id"
                # On PostgreSQL a plain insert, as `write_capped_rows`' COPY: under the lock,
                # with the cursor just checked, no other expansion writes this chunk, so a
                # conflict cannot happen and would fail the chunk rather than duplicate a
                # message; ON CONFLICT's speculative insertion costs every row.
                + ("" if pg else " ON CONFLICT (occurrence_id, recipient_id, period) DO NOTHING")
            )
            result = s.connection().exec_driver_sql(sql, tuple(params))
            # sqlite3 reports no rowcount for a statement that starts with WITH.
            written = (
                int(result.rowcount)
                if pg
                else int(s.connection().exec_driver_sql("SELECT changes()").scalar_one())
            )
        if eligible > written:
            total[OVER_CAP] = total.get(OVER_CAP, 0) + eligible - written
        s.execute(
            update(Occurrence)
            .where(Occurrence.id == occurrence_id)
            .values(cursor=cursor, excluded=total)
        )
    return ChunkWritten(written, total)


def reopen_failed(engine: Engine, occurrence_id: int) -> bool:
    """A failed occurrence back to `expanding`, to resume from its cursor; False if it was not
    failed (so two retries at once cannot both run it)."""
    with transaction(engine) as s:
        result = s.execute(
            update(Occurrence)
            .where(Occurrence.id == occurrence_id, Occurrence.state == OccurrenceState.FAILED)
            .values(state=OccurrenceState.EXPANDING, error=None, finished_at=None)
        )
        return _rowcount(result) == 1


def count_messages(engine: Engine, occurrence_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(Message)
                .where(Message.occurrence_id == occurrence_id)
            ).scalar_one()
        )


def queued_for_town(engine: Engine, *, town_id: str, since: dt.datetime, until: dt.datetime) -> int:
    """Messages of a town queued or being sent for occurrences in [since, until): not yet
    counted by quotas, but on their way."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(Message)
                .join(Occurrence, Occurrence.id == Message.occurrence_id)
                .where(
                    Message.town_id == town_id,
                    Message.state.in_([MessageState.QUEUED, MessageState.SENDING]),
                    Occurrence.scheduled_at >= since,
                    Occurrence.scheduled_at < until,
                )
            ).scalar_one()
        )
