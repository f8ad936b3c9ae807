"""Dispatch throughput against the fake Twilio on 127.0.0.1, next to a ceiling and a baseline.

    .venv/bin/python benchmarks/bench_dispatch.py [--messages 20000] [--concurrency 16]
        [--latency-ms 20 --jitter-ms 10] [--database-url postgresql+psycopg://…] [--workers 3]

The fake runs as its own process, answering each create after `--latency-ms` (plus up to
`--jitter-ms`), as a real provider would. In the same run:
- ceiling: the fake server's saturated throughput, measured with 1, 2, ... `--ceiling-processes`
  processes of bare `requests` loops (keep-alive, `--concurrency` threads each) posting the same
  form to the same endpoint, keeping the best: what the server allows, not what one Python
  client process can push;
- naive: a sequential loop of `client.messages.create` (the official client), on a subset;
- pingan: `Dispatcher.run(until_empty=True)` draining an outbox of the same size on SQLite
  (or the PostgreSQL server given), through the official client, with claims, attempts,
  counters, statuses and the shared rate limit's seconds recorded;
- workers (with `--workers N` above 1, PostgreSQL only): N dispatcher processes
  (`scheduler.workers.run_workers`, what `pingan dispatch --workers N` runs) draining another
  outbox of the same size; the fake's duplicate count is checked after them.
Each variant's time starts when its dispatching starts (the outbox is expanded before) and, for
the workers, includes starting the processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from scheduler.core import Core  # noqa: E402
from scheduler.dispatcher import Dispatcher  # noqa: E402
from scheduler.logs import configure_logging  # noqa: E402
from scheduler.models import Message  # noqa: E402
from scheduler.providers import make_provider  # noqa: E402
from scheduler.settings import DispatchSettings, Settings, TwilioSettings  # noqa: E402
from scheduler.simulation import ManualClock  # noqa: E402
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN  # noqa: E402
from scheduler.workers import run_workers  # noqa: E402
from tests.factories import add_recipients  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


def start_fake(port: int, latency_ms: float, jitter_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_twilio",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--jitter-ms",
            str(jitter_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _client_process(base: str, n: int, concurrency: int, offset: int) -> None:
    """One bare client process: `concurrency` keep-alive threads posting n creates in all."""
    url = f"{base}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    per = n // concurrency
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            post_all(k)
        except BaseException as exc:  # a thread's error must fail the process
            failures.append(exc)

    def post_all(k: int) -> None:
        s = requests.Session()
        s.auth = (ACCOUNT_SID, AUTH_TOKEN)
        for i in range(per):
            r = s.post(
                url,
                data={
                    "To": f"+861{offset + k:04d}{i:06d}",
                    "Body": "【平安上虞】测试回T退订",
                    "MessagingServiceSid": "MG1",
                },
            )
            assert r.status_code == 201
        s.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"client process failed: {failures[0]!r}")


def ceiling(base: str, n: int, concurrency: int, processes: int) -> list[float]:
    """Requests/s with 1..processes client processes (the best is the server's ceiling; the
    first is what one Python process can push, the ceiling for one dispatcher)."""
    ctx = mp.get_context("fork")
    rates = []
    for k in range(1, processes + 1):
        per_proc = max(concurrency, n // k)
        procs = [
            ctx.Process(target=_client_process, args=(base, per_proc, concurrency, 100 * j))
            for j in range(k)
        ]
        began = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0
        rates.append((per_proc // concurrency) * concurrency * k / (time.perf_counter() - began))
    return rates


def naive(settings: Settings, n: int) -> float:
    from twilio.rest import Client

    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = settings.twilio.base_url
    began = time.perf_counter()
    for i in range(n):
        client.messages.create(
            to=f"+8613999{i:06d}", body="【平安上虞】测试回T退订", messaging_service_sid="MG1"
        )
    return n / (time.perf_counter() - began)


def _outbox(settings: Settings, n: int, clock: ManualClock, start: int = 0) -> Core:
    """n messages queued (numbers from `start`, so variants never send the same one)."""
    core = Core(settings, clock=clock)
    add_recipients(core.engine, core.district, n, start=start)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    return core


def pingan(settings: Settings, n: int) -> float:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core = _outbox(settings, n, clock)
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    began = time.perf_counter()
    stats = d.run(until_empty=True)
    elapsed = time.perf_counter() - began
    d.close()
    core.close()
    assert stats.sent == n, stats
    return n / elapsed


def workers(settings: Settings, n: int, count: int) -> tuple[float, float]:
    """`count` dispatcher processes on their own outbox (they read the real clock): messages/s
    from the first hand-over to the last (sent_at), and over the whole run with the processes'
    start-up (a second or more of imports each on a busy machine, paid once by a service)."""
    core = _outbox(settings, n, ManualClock(MONDAY + dt.timedelta(minutes=1)), start=n)
    began = time.perf_counter()
    result = run_workers(settings, count, stop=threading.Event(), until_empty=True)
    elapsed = time.perf_counter() - began
    assert not result.problems and result.stats.sent == n, (result.problems, result.stats)
    with core.engine.connect() as conn:
        first, last = conn.execute(
            select(func.min(Message.sent_at), func.max(Message.sent_at))
        ).one()
    core.close()
    assert first is not None and last is not None
    span = (last - first).total_seconds()
    # n - 1 intervals between the first and the last hand-over.
    return (n - 1) / span, n / elapsed


def fake_duplicates(base: str) -> int:
    return int(requests.get(f"{base}/_fake/stats", timeout=10).json()["duplicates"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake's latency")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus up to this much")
    parser.add_argument(
        "--ceiling-processes", type=int, default=3, help="most client processes for the ceiling"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run this many dispatcher processes (PostgreSQL only)",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (a scratch database); default: a SQLite file",
    )
    args = parser.parse_args()
    configure_logging("json", "WARNING")
    from benchmarks._db import ScratchDatabases

    fake, base = start_fake(args.port, args.latency_ms, args.jitter_ms)
    work = Path(tempfile.mkdtemp(prefix="pingan-bench-dispatch-"))
    dbs = ScratchDatabases(work, args.database_url)
    settings = Settings(
        data_dir=work,
        database_url=dbs.fresh("dispatch"),
        # The workers read the real clock: any hour is a sending hour here.
        sending_hours="00:00-23:59:59",
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates" / "messages",
        provider="twilio",
        twilio=TwilioSettings(
            account_sid=ACCOUNT_SID,
            auth_token=SecretStr(AUTH_TOKEN),
            messaging_service_sid="MG" + "1" * 32,
            base_url=base,
            timeout_seconds=10,
        ),
        dispatch=DispatchSettings(
            concurrency=args.concurrency, rate_per_second=1e6, batch_size=1000
        ),
        log_format="json",
        log_level="WARNING",
    )
    try:
        print(f"fake latency: {args.latency_ms:g} ms + up to {args.jitter_ms:g} ms jitter")
        rates = ceiling(base, args.messages, args.concurrency, args.ceiling_processes)
        c, one = max(rates), rates[0]
        print(
            f"ceiling : {c:,.0f} requests/s (bare requests, {rates.index(c) + 1} process(es) x "
            f"{args.concurrency} threads, best of 1-{args.ceiling_processes}: "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + ")"
        )
        nv = naive(settings, args.naive)
        print(f"naive   : {nv:,.0f} messages/s (sequential client.messages.create)")
        p = pingan(settings, args.messages)
        print(f"pingan  : {p:,.0f} messages/s ({args.messages:,} through one dispatcher)")
        w = 0.0
        if args.workers > 1 and dbs.postgres:
            before = fake_duplicates(base)
            many = settings.model_copy(update={"database_url": dbs.fresh("workers")})
            w, whole = workers(many, args.messages, args.workers)
            dup = fake_duplicates(base) - before
            print(
                f"workers : {w:,.0f} messages/s ({args.messages:,} through {args.workers} "
                f"dispatcher processes, first to last send; {whole:,.0f}/s with their "
                f"start-up; duplicates at the fake: {dup})"
            )
            assert dup == 0
        elif args.workers > 1:
            print("workers : skipped (several dispatcher processes need PostgreSQL)")
        print()
        backend = "PostgreSQL" if dbs.postgres else "SQLite"
        print(f"database: {backend}; fake latency {args.latency_ms:g} ms + {args.jitter_ms:g}")
        print(f"pingan / ceiling : {p / c:.0%}  (one dispatcher)")
        print(f"pingan / one-process ceiling: {p / one:.0%}  (goal >= 90% on SQLite)")
        if w:
            print(f"workers / ceiling: {w / c:.0%}  ({args.workers} processes; goal >= 90%)")
        print(f"pingan / naive   : {p / nv:.1f}x")
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
        print(f"machine: {machine}, Python {platform.python_version()}")
    finally:
        fake.terminate()
        fake.wait()
        dbs.drop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
