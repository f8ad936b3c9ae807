"""Expanding one occurrence of 1,000,000 recipients, against a ceiling and a baseline.

    .venv/bin/python benchmarks/bench_expand.py [--recipients 1000000] [--naive 20000]
        [--database-url postgresql+psycopg://user@host/db]

A SQLite file by default; with `--database-url` each variant gets its own PostgreSQL database
(copied from one prepared database, dropped at the end) and the ceiling is COPY.

Each variant runs in its own process so its peak memory (ru_maxrss) is its own:
- pingan: `Planner.fire_scheduled` of the weekly campaign (stream recipients, classify,
  render once per context, chunked inserts each with the occurrence cursor);
- ceiling: a raw `sqlite3` executemany inserting the same rows into the same table (on
  PostgreSQL, psycopg's COPY of the same rows, one transaction);
- naive, two ways a competent newcomer would write it with the ORM, over the whole run (not
  a sample scaled up): `naive-row`, an ORM object per recipient committed per row (a Session
  with expire_on_commit=False, so a commit does not re-select what it holds); `naive-batch`,
  an ORM object per recipient committed every 5,000. Both read recipients in id-keyed pages and
  apply the opt-out and weekly-cap checks as pingan does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
WORK: list[Path] = []
COLUMNS = (
    "occurrence_id, recipient_id, phone, town_id, village_id, carrier, body_id, segments, "
    "rank, state, attempts, queued_at, next_attempt_at, period"
)


def _settings(url: str) -> Any:
    from scheduler.settings import Settings

    return Settings(
        data_dir=WORK[0],
        database_url=url,
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates" / "messages",
        log_format="json",
        log_level="WARNING",
    )


def prepare(db: str, n: int) -> None:
    from scheduler.core import Core
    from tests.factories import add_recipients

    core = Core(_settings(db))
    add_recipients(core.engine, core.district, n)
    core.close()


def run_pingan(db: str, out: Any) -> None:
    from scheduler.core import Core
    from scheduler.logs import configure_logging

    configure_logging("json", "WARNING")
    core = Core(_settings(db))
    planner = core.planner()
    weekly = core.campaigns.get("weekly-antifraud")
    began = time.perf_counter()
    result = planner.fire_scheduled(weekly, MONDAY)
    elapsed = time.perf_counter() - began
    core.close()
    out.put(("pingan", elapsed, result.queued, _rss_mb()))


def run_ceiling(db: str, source: str, out: Any) -> None:
    from benchmarks._db import raw_connect

    src: Any = raw_connect(source)
    cur = src.cursor()
    cur.execute(f"SELECT {COLUMNS} FROM messages")
    rows = cur.fetchall()
    src.close()
    from scheduler.core import Core

    Core(_settings(db)).engine.dispose()  # same schema, same indexes
    conn: Any = raw_connect(db)
    if not isinstance(conn, sqlite3.Connection):
        # A copy of pingan's database (its bodies and occurrence satisfy the foreign keys)
        # with the messages taken out.
        conn.execute("TRUNCATE messages CASCADE")
        conn.commit()
    began = time.perf_counter()
    if isinstance(conn, sqlite3.Connection):
        conn.executemany(
            f"INSERT INTO messages ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
        )
    else:
        with conn.cursor() as cur, cur.copy(f"COPY messages ({COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    conn.commit()
    elapsed = time.perf_counter() - began
    conn.close()
    out.put(("ceiling", elapsed, len(rows), _rss_mb()))


def run_naive(db: str, limit: int, commit_every: int, out: Any) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from scheduler.core import Core
    from scheduler.models import (
        Message,
        MessageBody,
        Occurrence,
        OccurrenceState,
        OptOut,
        Recipient,
    )

    core = Core(_settings(db))
    engine = core.engine
    with Session(engine, expire_on_commit=False) as s:
        body = MessageBody(
            digest="naive",
            text="【平安上虞】防范电信网络诈骗，回T退订",
            template_name="naive",
            template_hash="naive",
            chars=20,
            segments=1,
        )
        s.add(body)
        occ = Occurrence(
            campaign=f"naive-{commit_every}",
            scheduled_at=MONDAY,
            kind="manual",
            target={},
            channel="sms",
            priority=0,
            state=OccurrenceState.EXPANDING,
            paused=False,
            queued=0,
            excluded={},
            cursor=0,
            created_at=dt.datetime.now(dt.UTC),
        )
        s.add(occ)
        s.commit()
        opted = set(s.scalars(select(OptOut.phone)))
        week_from = MONDAY - dt.timedelta(hours=9)
        began = time.perf_counter()
        written, last = 0, 0
        while written < limit:
            page = s.scalars(
                select(Recipient).where(Recipient.id > last).order_by(Recipient.id).limit(1000)
            ).all()
            if not page:
                break
            last = page[-1].id
            counts = dict(
                s.execute(
                    select(Message.recipient_id, func.count())
                    .where(
                        Message.recipient_id.between(page[0].id, last),
                        Message.queued_at >= week_from,
                        Message.occurrence_id != occ.id,
                    )
                    .group_by(Message.recipient_id)
                ).all()
            )
            for r in page:
                if written >= limit:
                    break
                if r.phone in opted or counts.get(r.id, 0) >= 2:
                    continue
                s.add(
                    Message(
                        occurrence_id=occ.id,
                        recipient_id=r.id,
                        phone=r.phone,
                        town_id=r.town_id,
                        village_id=r.village_id,
                        carrier=r.carrier,
                        body_id=body.id,
                        segments=body.segments,
                        rank=0,
                        queued_at=dt.datetime.now(dt.UTC),
                        next_attempt_at=MONDAY,
                        period=occ.scheduled_at.astimezone(TZ).date().replace(day=1),
                    )
                )
                written += 1
                if written % commit_every == 0:
                    s.commit()
            s.expunge_all()
        s.commit()
        elapsed = time.perf_counter() - began
    core.close()
    out.put((f"naive-{commit_every}", elapsed, written, _rss_mb()))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(target: Any, *args: Any) -> tuple[str, float, int, float]:
    q: Any = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument(
        "--naive",
        type=int,
        default=0,
        help="rows for the naive loops (default: all recipients; a smaller run is scaled, "
        "which flatters them if they slow down as the table grows)",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (each variant in its own scratch database); "
        "default: SQLite files in a temporary folder",
    )
    args = parser.parse_args()
    from benchmarks._db import ScratchDatabases, describe

    naive_rows = args.naive or args.recipients
    work = Path(tempfile.mkdtemp(prefix="pingan-bench-expand-"))
    WORK.append(work)
    dbs = ScratchDatabases(work, args.database_url)
    ceiling_name = "COPY" if dbs.postgres else "raw executemany"
    try:
        t0 = time.perf_counter()
        fresh = dbs.fresh("fresh")
        prepare(fresh, args.recipients)
        main_db = dbs.copy("fresh", "expand")
        print(f"prepared {args.recipients:,} recipients in {time.perf_counter() - t0:.1f} s")

        _, p_time, queued, p_rss = _child(run_pingan, main_db)
        rate = queued / p_time
        print(f"pingan  : {queued:,} queued in {p_time:.2f} s ({rate:,.0f}/s), peak {p_rss:.0f} MB")
        ceiling_db = dbs.copy("expand", "ceiling") if dbs.postgres else dbs.fresh("ceiling")
        _, c_time, c_rows, c_rss = _child(run_ceiling, ceiling_db, main_db)
        print(f"ceiling : {c_rows:,} rows {ceiling_name} in {c_time:.2f} s, peak {c_rss:.0f} MB")
        naive: dict[int, float] = {}
        for every in (1, 5000):
            # Each naive loop starts from the same database pingan started from.
            naive_db = dbs.copy("fresh", f"naive-{every}")
            _, n_time, n_rows, n_rss = _child(run_naive, naive_db, naive_rows, every)
            scaled = n_time * queued / max(n_rows, 1)
            naive[every] = scaled
            note = "" if n_rows >= queued else f" -> {scaled:,.1f} s scaled to {queued:,}"
            print(
                f"naive, commit every {every:>4}: {n_rows:,} rows in {n_time:.2f} s{note}, "
                f"peak {n_rss:.0f} MB"
            )
        print()
        target = "1.3x" if dbs.postgres else "1.5x"
        print(f"pingan / ceiling time : {p_time / c_time:.2f}x  (target <= {target})")
        for every, t in naive.items():
            print(f"naive (commit every {every}) / pingan time : {t / p_time:.1f}x")
        print(f"pingan peak memory    : {p_rss:.0f} MB  (target <= 150 MB)")
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {describe(args.database_url)}"
        )
    finally:
        dbs.drop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
