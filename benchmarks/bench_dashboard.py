"""The console's 总览 (dashboard) on a large district: 1,000,000 residents, 10,000,000 messages.

Builds, in a scratch folder, bench_quota_status's district of N towns and its SQLite database
(N messages over October-December 2022 with every index, and the `send_counters` they make),
adds R residents, then times, with the clock on 12 October 2022 at noon:

- `scheduler.services.console.dashboard` (the use case the page calls: every rule's window
  containing the day, today's sending, next firings, alerts), and
- `GET /` over HTTP on uvicorn on 127.0.0.1, logged in as a district admin (the use case plus
  the Jinja rendering of every town's row and the chart data),

against, as the baseline in the same run, the naive page a newcomer writes: the week's and the
month's counts by `COUNT(*) ... GROUP BY town` over the messages table.

    .venv/bin/python benchmarks/bench_dashboard.py [--messages 10000000] [--residents 1000000]
        [--towns 1000] [--runs 5]

Prints the figures; the goal is under 300 ms for the page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quota_status import build, naive, timed, write_config

from scheduler import accounts
from scheduler.console import mount_console
from scheduler.core import Core
from scheduler.models import Role
from scheduler.services import console as uc
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2022, 10, 12, 12, 0, tzinfo=TZ)
PASSWORD = "bench-password-1"


def add_residents(core: Core, residents: int, towns: int) -> float:
    t0 = time.perf_counter()
    with core.engine.begin() as conn:
        conn.execute(
            text(
                "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :r - 1)"
                " INSERT INTO recipients (id, phone, name, town_id, village_id, household,"
                " carrier, residence, segments, created_at, updated_at)"
                " SELECT n + 1, printf('139%08d', n), NULL, 't' || printf('%04d', n % :towns),"
                " 'v' || (n % 3), NULL, CASE n % 3 WHEN 0 THEN 'mobile' WHEN 1 THEN 'unicom'"
                " ELSE 'telecom' END, 'registered', '', '2022-09-01 00:00:00.000000',"
                " '2022-09-01 00:00:00.000000' FROM s"
            ),
            {"r": residents, "towns": towns},
        )
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--residents", type=int, default=1_000_000)
    ap.add_argument("--towns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        config = scratch / "config"
        write_config(config, args.towns)
        for name in ("campaigns.yaml", "replies.yaml", "twilio_errors.yaml"):
            shutil.copy(ROOT / "config" / name, config / name)
        settings = Settings(
            data_dir=scratch / "var",
            database_url=f"sqlite:///{scratch / 'bench.db'}",
            config_dir=config,
            templates_dir=ROOT / "templates" / "messages",
        )
        core = Core(settings, clock=lambda: NOW)
        figures = build(core, args.messages, args.towns)
        figures["load_residents_s"] = add_residents(core, args.residents, args.towns)
        with core.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        admin = accounts.create_user(core, "bench", Role.ADMIN, PASSWORD)

        first, median, board = timed(lambda: uc.dashboard(core, admin, day=NOW.date()), args.runs)
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
                    "/login",
                    data={"csrf_token": token, "username": "bench", "password": PASSWORD},
                )

                def get_page() -> int:
                    response = client.get("/?on=2022-10-12")
                    assert response.status_code == 200, response.status_code
                    return len(response.content)

                http_first, http_median, size = timed(get_page, args.runs)
        finally:
            server.should_exit = True
            thread.join(timeout=10)

        week = dt.datetime(2022, 10, 10, tzinfo=TZ), dt.datetime(2022, 10, 17, tzinfo=TZ)
        month = dt.datetime(2022, 10, 1, tzinfo=TZ), dt.datetime(2022, 11, 1, tzinfo=TZ)

        def naive_page() -> int:
            n = 0
            for start, end in (week, month):
                n += len(naive(core, "town", start, end)) + len(naive(core, "carrier", start, end))
            return n

        naive_first, naive_median, _ = timed(naive_page, args.runs)
        core.close()

        print(
            f"bench_dashboard on {dt.date.today()}: {args.messages:,} messages, "
            f"{args.residents:,} residents, {args.towns} towns; Python "
            f"{platform.python_version()}, {platform.machine()}"
        )
        print(
            f"loading: messages {figures['load_messages_s']:.1f} s, counters "
            f"{figures['load_counters_s']:.1f} s ({int(figures['counter_rows']):,} rows), "
            f"residents {figures['load_residents_s']:.1f} s"
        )
        print("| what | first | median |")
        print("|---|---|---|")
        print(
            f"| use case `dashboard()` ({rows} rows) | {first * 1000:.0f} ms | "
            f"{median * 1000:.0f} ms |"
        )
        print(
            f"| `GET /` over HTTP ({size:,} bytes) | {http_first * 1000:.0f} ms | "
            f"{http_median * 1000:.0f} ms |"
        )
        print(
            f"| baseline: COUNT(*) GROUP BY over messages (week + month) | "
            f"{naive_first * 1000:.0f} ms | {naive_median * 1000:.0f} ms |"
        )
        verdict = "met" if http_median < 0.3 else "NOT met"
        print(f"page median {http_median * 1000:.0f} ms: goal under 300 ms {verdict}")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
