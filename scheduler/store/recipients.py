"""Recipients and opt-outs: upserts by phone, and the counts operators ask for."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from scheduler.db import db_time_cache, transaction
from scheduler.models import OptOut, Recipient
from scheduler.store.optouts import insert_opt_outs

_UPDATED_COLUMNS = (
    "name",
    "town_id",
    "village_id",
    "household",
    "carrier",
    "residence",
    "segments",
    "updated_at",
)


CHUNK_ROWS = 5000


def _dialect(bind: Engine | Connection) -> Any:
    return postgresql if bind.dialect.name == "postgresql" else sqlite


def upsert_recipients(
    bind: Engine | Connection, rows: Sequence[dict[str, Any]], *, chunk_rows: int = CHUNK_ROWS
) -> tuple[int, int]:
    """Insert or update by phone; returns (inserted, updated).

    Given an Engine, each chunk of `chunk_rows` commits in its own transaction; given a
    Connection, everything runs in the caller's transaction. `rows` are Recipient column dicts
    (segments as ';a;b;', aware UTC timestamps) holding each phone at most once per chunk.
    Opt-outs live in their own table, so an import never clears one; `created_at` is kept on
    update.
    """
    inserted = updated = 0
    for i in range(0, len(rows), chunk_rows):
        chunk = rows[i : i + chunk_rows]
        if isinstance(bind, Connection):
            n_new, n_old = _upsert_chunk(bind, chunk)
        else:
            with bind.begin() as conn:
                n_new, n_old = _upsert_chunk(conn, chunk)
        inserted += n_new
        updated += n_old
    return inserted, updated


_TABLE = Recipient.__table__
# Built once: statements rebuilt per chunk (a fresh `excluded` alias, a literal IN list) made
# SQLAlchemy keep a little of each, and memory grew with the file.
_EXISTING = select(_TABLE.c.phone).where(_TABLE.c.phone.in_(bindparam("phones", expanding=True)))
_UPSERTS: dict[str, Any] = {}
_COMPILED: dict[tuple[str, tuple[str, ...]], tuple[str, list[tuple[str, Any]]]] = {}


def _upsert_statement(conn: Connection) -> Any:
    name = conn.dialect.name
    if name not in _UPSERTS:
        stmt = _dialect(conn).insert(_TABLE)
        _UPSERTS[name] = stmt.on_conflict_do_update(
            index_elements=["phone"],
            set_={c: getattr(stmt.excluded, c) for c in _UPDATED_COLUMNS},
        )
    return _UPSERTS[name]


_WRITTEN_AT = select(_TABLE.c.phone, _TABLE.c.town_id).where(
    _TABLE.c.phone.in_(bindparam("phones", expanding=True)),
    _TABLE.c.updated_at == bindparam("stamp", type_=Recipient.__table__.c.updated_at.type),
)


def towns_written_at(engine: Engine, phones: Sequence[str], stamp: dt.datetime) -> dict[str, str]:
    """Town of each of `phones` last written with `updated_at == stamp` (by one import run).

    An import stamps every row it writes with its own start time, so this finds the rows an
    earlier chunk of the same file wrote without keeping every phone of the file in memory.
    """
    if not phones:
        return {}
    with engine.connect() as conn:
        return {
            str(p): str(t)
            for p, t in conn.execute(_WRITTEN_AT, {"phones": list(phones), "stamp": stamp})
        }


def _upsert_chunk(conn: Connection, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    if not rows:
        return 0, 0
    phones = [r["phone"] for r in rows]
    existing = set(conn.scalars(_EXISTING, {"phones": phones}))
    if conn.dialect.name == "sqlite":
        _sqlite_executemany(conn, rows)
    else:
        # psycopg: SQLAlchemy batches the rows into multi-row VALUES statements.
        conn.execute(_upsert_statement(conn), list(rows))
    return len(rows) - len(existing), len(existing)


def _sqlite_executemany(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """The same upsert, compiled once and run by the driver's executemany.

    SQLAlchemy would process every parameter of every row in Python (most of the import's
    time); here only columns whose type has a bind processor (the UTC timestamps) are
    converted, by the column types' own processors, so the stored values are the same.
    """
    columns = tuple(rows[0])
    key = (conn.dialect.name, columns)
    if key not in _COMPILED:
        compiled = _upsert_statement(conn).compile(dialect=conn.dialect, column_keys=columns)
        order = compiled.positiontup or []
        _COMPILED[key] = (
            str(compiled),
            [
                (n, _TABLE.c[n].type.dialect_impl(conn.dialect).bind_processor(conn.dialect))
                for n in order
            ],
        )
    sql, processors = _COMPILED[key]
    memo: dict[tuple[str, Any], Any] = {}

    def convert(name: str, proc: Any, value: Any) -> Any:
        # An import stamps every row with the same instant: convert each value once.
        memo_key = (name, value)
        if memo_key not in memo:
            memo[memo_key] = proc(value)
        return memo[memo_key]

    params = [
        tuple(row[n] if proc is None else convert(n, proc, row[n]) for n, proc in processors)
        for row in rows
    ]
    conn.exec_driver_sql(sql, params)


# A recipient row as an import writes it, in this order (storage form: timestamps converted
# by `db_time_cache`). Both the SQLite upsert and PostgreSQL's COPY are built from it.
IMPORT_COLUMNS = (
    "phone",
    "name",
    "town_id",
    "village_id",
    "household",
    "carrier",
    "residence",
    "segments",
    "created_at",
    "updated_at",
)
_SET = ", ".join(f"{c} = excluded.{c}" for c in _UPDATED_COLUMNS)
# A phone this import already wrote in another town keeps that town: the update is skipped
# (the caller finds those rows afterwards and rejects them as conflicts).
_KEEP_EARLIER_TOWN = (
    "WHERE recipients.updated_at <> excluded.updated_at OR recipients.town_id = excluded.town_id"
)
_SQLITE_UPSERT = (
    f"INSERT INTO recipients ({', '.join(IMPORT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(IMPORT_COLUMNS))}) "
    f"ON CONFLICT (phone) DO UPDATE SET {_SET} {_KEEP_EARLIER_TOWN}"
)
_PG_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS recipients_import ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(IMPORT_COLUMNS)} FROM recipients WITH NO DATA"
)
_PG_UPSERT = (
    f"WITH up AS (INSERT INTO recipients ({', '.join(IMPORT_COLUMNS)}) "
    f"SELECT {', '.join(IMPORT_COLUMNS)} FROM recipients_import "
    f"ON CONFLICT (phone) DO UPDATE SET {_SET} {_KEEP_EARLIER_TOWN} "
    "RETURNING (xmax = 0) AS inserted) "
    "SELECT count(*) FILTER (WHERE inserted), count(*) FROM up"
)


def stored_time(engine: Engine) -> Any:
    """`when` as the recipients table stores it, for rows built by `upsert_import_chunk`'s
    callers."""
    return db_time_cache(engine.dialect.name)


def upsert_import_chunk(engine: Engine, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Upsert one import chunk in one transaction; returns (inserted, updated).

    `rows` are tuples in IMPORT_COLUMNS order, storage form, each phone at most once, all
    stamped with the import's own `updated_at`. A row whose phone this import already wrote
    in another town is neither inserted nor updated (`rows` minus the two counts is how many;
    `towns_written_at` finds them). Counting needs no query per phone:
    - SQLite: the rows go in by one executemany; the transaction takes the write lock first
      (a write that matches nothing), so the ids above the table's largest id before the
      executemany are exactly the rows it inserted, and the connection's change count less
      those is the rows it updated;
    - PostgreSQL: the rows are COPied into a temporary staging table (emptied at commit),
      then one `INSERT … SELECT … ON CONFLICT DO UPDATE` reports per row whether it inserted
      (`xmax = 0`).
    """
    if not rows:
        return 0, 0
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection
        if conn.dialect.name == "sqlite":
            cur = raw.cursor()
            cur.execute("UPDATE recipients SET id = id WHERE 0")
            before = cur.execute("SELECT coalesce(max(id), 0) FROM recipients").fetchone()[0]
            changes = raw.total_changes
            cur.executemany(_SQLITE_UPSERT, rows)
            changed = raw.total_changes - changes
            inserted = cur.execute(
                "SELECT count(*) FROM recipients WHERE id > ?", (before,)
            ).fetchone()[0]
            cur.close()
            return int(inserted), int(changed - inserted)
        with raw.cursor() as cur:
            cur.execute(_PG_STAGING)
            with cur.copy(f"COPY recipients_import ({', '.join(IMPORT_COLUMNS)}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            cur.execute(_PG_UPSERT)
            inserted, written = cur.fetchone()
        return int(inserted), int(written - inserted)


def record_opt_outs(
    engine: Engine,
    phones: Iterable[str],
    *,
    source: str,
    reason: str | None = None,
    reply_text: str | None = None,
    now: dt.datetime,
) -> int:
    """Record refusals (normalised numbers); returns how many are new.

    Idempotent: a number already recorded keeps its first source, reason and time. Imports
    never touch this table, so a refusal outlives any later list that names the resident.
    The residents' queued and retrying messages are cancelled in the same transaction.
    """
    return record_opt_outs_counted(
        engine, phones, source=source, reason=reason, reply_text=reply_text, now=now
    )[0]


def record_opt_outs_counted(
    engine: Engine,
    phones: Iterable[str],
    *,
    source: str,
    reason: str | None = None,
    reply_text: str | None = None,
    now: dt.datetime,
) -> tuple[int, int]:
    """`record_opt_outs`, returning (new refusals, messages cancelled)."""
    unique = sorted(set(phones))
    if not unique:
        return 0, 0
    with transaction(engine) as s:
        return insert_opt_outs(
            s,
            unique,
            source=source,
            reason=reason,
            reply_text=reply_text,
            now=now,
        )


def is_opted_out(engine: Engine, phone: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(OptOut.phone).where(OptOut.phone == phone)).first() is not None


def stats(engine: Engine) -> dict[str, Any]:
    """Counts by town, village, carrier and segment, and how many opted out."""
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(Recipient)).scalar_one()
        by_town = dict(
            conn.execute(select(Recipient.town_id, func.count()).group_by(Recipient.town_id)).all()
        )
        by_village = {
            f"{t}/{v}": n
            for t, v, n in conn.execute(
                select(Recipient.town_id, Recipient.village_id, func.count()).group_by(
                    Recipient.town_id, Recipient.village_id
                )
            ).all()
        }
        by_carrier = dict(
            conn.execute(select(Recipient.carrier, func.count()).group_by(Recipient.carrier)).all()
        )
        by_segments = conn.execute(
            select(Recipient.segments, func.count()).group_by(Recipient.segments)
        ).all()
        opted_out = conn.execute(select(func.count()).select_from(OptOut)).scalar_one()
        opted_in_list = conn.execute(
            select(func.count())
            .select_from(Recipient)
            .join(OptOut, OptOut.phone == Recipient.phone)
        ).scalar_one()
    by_segment: dict[str, int] = {}
    for joined, n in by_segments:
        for seg in (joined or "").split(";"):
            if seg:
                by_segment[seg] = by_segment.get(seg, 0) + int(n)
    return {
        "total": int(total),
        "opted_out": int(opted_out),
        "opted_out_in_lists": int(opted_in_list),
        "by_town": {k: int(v) for k, v in sorted(by_town.items())},
        "by_village": {k: int(v) for k, v in sorted(by_village.items())},
        "by_carrier": {k: int(v) for k, v in sorted(by_carrier.items())},
        "by_segment": dict(sorted(by_segment.items())),
    }
