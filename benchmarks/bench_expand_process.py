"""Expansion as whole processes: `pingan campaigns run` against a raw read-build-insert script.

    .venv/bin/python benchmarks/bench_expand_process.py [--recipients 500000]
        [--database-url postgresql+psycopg://user@host/db]

Both start from copies of the same prepared database and are timed as whole processes
(interpreter start-up, imports and the final commit included), which is what an operator
waits for:
- pingan: `pingan campaigns run weekly-antifraud --at 2022-10-10T09:00 --format json`;
- raw: this script's `--raw` mode, a bare DBAPI program a competent developer writes in an
  afternoon: one body and one occurrence row, recipients read in id-keyed pages joined to the
  opt-outs, opted-out residents skipped, each row built once and inserted by executemany (COPY
  on PostgreSQL), one commit at the end. It has no weekly cap, no village check, no template
  rendering or approval, no resumable cursor and no exclusion counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLUMNS = (
    "occurrence_id, recipient_id, phone, town_id, village_id, carrier, body_id, segments, "
    "rank, queued_at, next_attempt_at, state, attempts, period"
)


def raw_expand(url: str) -> int:
    """The raw script: read, build, insert; returns the rows written."""
    from benchmarks._db import raw_connect

    conn: Any = raw_connect(url)
    pg = not isinstance(conn, sqlite3.Connection)
    p = "%s" if pg else "?"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    at = dt.datetime(2022, 10, 10, 1, 0)
    stamp: Any = now if pg else now.isoformat(" ", "microseconds")
    when: Any = at if pg else at.isoformat(" ", "microseconds")
    cur = conn.cursor()
    cur.execute(
        "INSERT INTO message_bodies (digest, text, template_name, template_hash, chars, "
        f"segments) VALUES ({p}, {p}, 'raw', 'raw', 20, 1)",
        ("raw", "【平安上虞】防范电信网络诈骗，回T退订"),
    )
    cur.execute("SELECT id FROM message_bodies WHERE digest = 'raw'")
    body = cur.fetchone()[0]
    cur.execute(
        "INSERT INTO occurrences (campaign, scheduled_at, kind, target, channel, priority, "
        "state, paused, queued, excluded, cursor, created_at) VALUES "
        f"('raw', {p}, 'manual', '{{}}', 'sms', 0, 'ready', {p}, 0, '{{}}', 0, {p})",
        (when, False, stamp),
    )
    cur.execute("SELECT id FROM occurrences WHERE campaign = 'raw'")
    occ = cur.fetchone()[0]
    page = (
        "SELECT r.id, r.phone, r.town_id, r.village_id, r.carrier, o.phone IS NOT NULL "
        f"FROM recipients r LEFT JOIN opt_outs o ON o.phone = r.phone WHERE r.id > {p} "
        f"ORDER BY r.id LIMIT {p}"
    )
    last, written = 0, 0
    # The occurrence's local month (2022-10-10 09:00 in Shanghai).
    period = "2022-10-01"
    insert = (
        f"INSERT INTO messages ({COLUMNS}) VALUES ({', '.join([p] * 11)}, 'queued', 0, '{period}')"
    )
    while True:
        cur.execute(page, (last, 5000))
        rows = cur.fetchall()
        if not rows:
            break
        last = rows[-1][0]
        out = [
            (occ, rid, phone, town, village, carrier, body, 1, 0, stamp, when)
            for rid, phone, town, village, carrier, opted in rows
            if not opted
        ]
        if pg:
            with cur.copy(f"COPY messages ({COLUMNS}) FROM STDIN") as copy:
                for row in out:
                    copy.write_row((*row, "queued", 0, period))
        else:
            cur.executemany(insert, out)
        written += len(out)
    conn.commit()
    conn.close()
    return written


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=500_000)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (scratch databases); default: SQLite files",
    )
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(f"raw: {raw_expand(args.raw)} rows")
        return
    from bench_expand import WORK, prepare

    from benchmarks._db import ScratchDatabases, describe

    work = Path(tempfile.mkdtemp(prefix="pingan-bench-expand-process-"))
    WORK.append(work)
    dbs = ScratchDatabases(work, args.database_url)
    try:
        prepare(dbs.fresh("fresh"), args.recipients)
        pingan_db = dbs.copy("fresh", "pingan")
        raw_db = dbs.copy("fresh", "raw")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        env.update(
            PINGAN_DATABASE_URL=pingan_db,
            PINGAN_DATA_DIR=str(work),
            PINGAN_CONFIG_DIR=str(ROOT / "config"),
            PINGAN_TEMPLATES_DIR=str(ROOT / "templates" / "messages"),
            PINGAN_LOG_LEVEL="WARNING",
        )
        pingan = str(Path(sys.executable).parent / "pingan")
        cmd = [pingan, "campaigns", "run", "weekly-antifraud", "--at", "2022-10-10T09:00"]
        p_time, p_out = _timed([*cmd, "--format", "json"], env)
        r_time, r_out = _timed([sys.executable, __file__, "--raw", raw_db], env)
        queued = json.loads(p_out)["queued"]
        print(f"pingan campaigns run : {p_time:.2f} s  queued: {queued} rows")
        print(f"raw script           : {r_time:.2f} s  {r_out.strip()}")
        print(f"pingan / raw (whole processes): {p_time / r_time:.2f}x  (target <= 1.3x)")
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {describe(args.database_url)}"
        )
    finally:
        dbs.drop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
