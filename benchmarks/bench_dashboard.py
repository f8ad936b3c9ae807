"""The console's 总览 (dashboard) on a large district: 1,000,000 residents, 10,000,000 messages.

Builds, in a scratch database (a SQLite file by default, a scratch database on the PostgreSQL
server given by --database-url, dropped at the end), bench_quota_status's district of N towns
and its messages (October-December 2022 with every index, the `send_counters` they make and
their roll-ups), adds R residents, then, in a fresh process (a restarted service) with the clock
on 12 October 2022 at noon, times the first call and the median of --runs more of:

- `scheduler.services.console.dashboard` (the use case the page calls: every rule's window
  containing the day, today's sending, next firings, alerts), and
- `GET /` over HTTP on uvicorn on 127.0.0.1, logged in as a district admin (the use case plus
  the Jinja rendering of every town's row and the chart data),

against, as the baseline in the same run, the naive page a newcomer writes: the week's and the
month's counts by `COUNT(*) ... GROUP BY town` and `... GROUP BY carrier` over the messages.

    .venv/bin/python benchmarks/bench_dashboard.py [--messages 10000000] [--residents 1000000]
        [--towns 1000] [--runs 9] [--database-url postgresql+psycopg://...]

Prints the figures; the goal is under 300 ms for the page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_quota_status import analyze, build, naive, timed, write_config  # noqa: E402

from benchmarks._db import ScratchDatabases, describe  # noqa: E402
from scheduler.core import Core  # noqa: E402
from scheduler.settings import Settings  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2022, 10, 12, 12, 0, tzinfo=TZ)
PASSWORD = "bench-password-1"

_RESIDENTS = {
    "sqlite": (
        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :r - 1)"
        " INSERT INTO recipients (id, phone, name, town_id, village_id, household,"
        " carrier, residence, segments, created_at, updated_at)"
        " SELECT n + 1, printf('139%08d', n), NULL, 't' || printf('%04d', n % :towns),"
        " 'v' || (n % 3), NULL, CASE n % 3 WHEN 0 THEN 'mobile' WHEN 1 THEN 'unicom'"
        " ELSE 'telecom' END, 'registered', '', '2022-09-01 00:00:00.000000',"
        " '2022-09-01 00:00:00.000000' FROM s"
    ),
    "postgresql": (
        "INSERT INTO recipients (id, phone, name, town_id, village_id, household,"
        " carrier, residence, segments, created_at, updated_at)"
        " SELECT n + 1, '139' || lpad(n::text, 8, '0'), NULL,"
        " 't' || lpad((n % :towns)::text, 4, '0'), 'v' || (n % 3), NULL,"
        " CASE n % 3 WHEN 0 THEN 'mobile' WHEN 1 THEN 'unicom' ELSE 'telecom' END,"
        " 'registered', '', timestamp '2022-09-01 00:00:00', timestamp '2022-09-01 00:00:00'"
        " FROM generate_series(CAST(0 AS bigint), :r - 1) AS n"
    ),
}


def add_residents(core: Core, residents: int, towns: int) -> float:
    t0 = time.perf_counter()
    with core.engine.begin() as conn:
        conn.execute(text(_RESIDENTS[core.engine.dialect.name]), {"r": residents, "towns": towns})
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(scratch: Path, url: str) -> Settings:
    return Settings(
        data_dir=scratch / "var",
        database_url=url,
        config_dir=scratch / "config",
        templates_dir=ROOT / "templates" / "messages",
    )


def child(scratch: Path, url: str, runs: int) -> dict[str, Any]:
    """In a fresh process (a restarted service): the use case, then the page over HTTP."""
    import httpx
    import uvicorn
    from fastapi import FastAPI

    from scheduler import accounts
    from scheduler.console import mount_console
    from scheduler.services import console as uc

    core = Core(_settings(scratch, url), clock=lambda: NOW)
    core.engine  # noqa: B018 - opened at start-up, as `pingan run` does
    core.district  # noqa: B018
    admin = accounts.get_user(core, "bench")
    first, median, board = timed(lambda: uc.dashboard(core, admin, day=NOW.date()), runs)
    rows = sum(len(s.rows) for s in board.statuses)

    app = FastAPI()
    mount_console(app, core)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            login = client.get("/login").text
            token = login.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            client.post(
                "/login", data={"csrf_token": token, "username": "bench", "password": PASSWORD}
            )

            def get_page() -> int:
                response = client.get("/?on=2022-10-12")
                assert response.status_code == 200, response.status_code
                return len(response.content)

            http_first, http_median, size = timed(get_page, runs)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    core.close()
    return {
        "first": first,
        "median": median,
        "rows": rows,
        "http_first": http_first,
        "http_median": http_median,
        "size": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--residents", type=int, default=1_000_000)
    ap.add_argument("--towns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=9, help="calls timed after the first one")
    ap.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (a scratch database); default: a SQLite file",
    )
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, url, runs = args.child
        print(json.dumps(child(Path(folder), url, int(runs))))
        return

    scratch = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    dbs = ScratchDatabases(scratch, args.database_url)
    try:
        write_config(scratch / "config", args.towns)
        for name in ("campaigns.yaml", "replies.yaml", "twilio_errors.yaml"):
            shutil.copy(ROOT / "config" / name, scratch / "config" / name)
        url = dbs.fresh("dashboard")
        core = Core(_settings(scratch, url), clock=lambda: NOW)
        backend = describe(args.database_url)
        print(f"building on {backend} ...", flush=True)
        figures = build(core, args.messages, args.towns)
        figures["load_residents_s"] = add_residents(core, args.residents, args.towns)
        analyze(core.engine)
        from scheduler import accounts
        from scheduler.models import Role

        accounts.create_user(core, "bench", Role.ADMIN, PASSWORD)

        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(scratch), url, str(args.runs)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")},
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])

        week = dt.datetime(2022, 10, 10, tzinfo=TZ), dt.datetime(2022, 10, 17, tzinfo=TZ)
        month = dt.datetime(2022, 10, 1, tzinfo=TZ), dt.datetime(2022, 11, 1, tzinfo=TZ)

        def naive_page() -> int:
            n = 0
            for start, end in (week, month):
                n += len(naive(core.engine, "town", start, end))
                n += len(naive(core.engine, "carrier", start, end))
            return n

        core.engine.dispose()
        naive_first, naive_median, _ = timed(naive_page, max(1, args.runs // 3))
        core.close()
    finally:
        dbs.drop_all()
        shutil.rmtree(scratch, ignore_errors=True)

    db_flag = " --database-url $PG_URL" if args.database_url else ""
    print(
        f"`.venv/bin/python benchmarks/bench_dashboard.py --messages {args.messages}"
        f" --residents {args.residents} --towns {args.towns}{db_flag}` on"
        f" {dt.date.today()}; {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}),"
        f" Python {platform.python_version()}, {backend}, {platform.machine()}"
    )
    print(
        f"loading: messages {figures['load_messages_s']:.1f} s, counters and roll-ups "
        f"{figures['load_counters_s']:.1f} s ({int(figures['counter_rows']):,} fine rows), "
        f"residents {figures['load_residents_s']:.1f} s"
    )
    print("| what | first after restart | median | naive / this (median) |")
    print("|---|---|---|---|")
    print(
        f"| use case `dashboard()` ({got['rows']} rows) | {got['first'] * 1000:.0f} ms | "
        f"{got['median'] * 1000:.0f} ms | {naive_median / got['median']:.1f}x |"
    )
    print(
        f"| `GET /` over HTTP ({got['size']:,} bytes) | {got['http_first'] * 1000:.0f} ms | "
        f"{got['http_median'] * 1000:.0f} ms | {naive_median / got['http_median']:.1f}x |"
    )
    print(
        f"| baseline: COUNT(*) GROUP BY town and carrier over messages (week + month) | "
        f"{naive_first * 1000:.0f} ms | {naive_median * 1000:.0f} ms | 1.0x |"
    )
    verdict = "met" if got["http_median"] < 0.3 else "NOT met"
    print(f"page median {got['http_median'] * 1000:.0f} ms: goal under 300 ms {verdict}")


if __name__ == "__main__":
    main()
