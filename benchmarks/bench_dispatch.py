"""Dispatch throughput against the fake Twilio on 127.0.0.1, next to a ceiling and a baseline.

    .venv/bin/python benchmarks/bench_dispatch.py [--messages 20000] [--concurrency 16]

The fake runs as its own process, answering each create after `--latency-ms` (plus up to
`--jitter-ms`), as a real provider would. In the same run:
- ceiling: the fake server's saturated throughput, measured with 1, 2, ... `--ceiling-processes`
  processes of bare `requests` loops (keep-alive, `--concurrency` threads each) posting the same
  form to the same endpoint, keeping the best: what the server allows, not what one Python
  client process can push;
- naive: a sequential loop of `client.messages.create` (the official client), on a subset;
- pingan: `Dispatcher.run(until_empty=True)` draining an outbox of the same size on SQLite,
  through the official client, with claims, attempts, counters and statuses recorded.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from scheduler.core import Core  # noqa: E402
from scheduler.dispatcher import Dispatcher  # noqa: E402
from scheduler.logs import configure_logging  # noqa: E402
from scheduler.providers import make_provider  # noqa: E402
from scheduler.settings import DispatchSettings, Settings, TwilioSettings  # noqa: E402
from scheduler.simulation import ManualClock  # noqa: E402
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN  # noqa: E402
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


def ceiling(base: str, n: int, concurrency: int, processes: int) -> tuple[float, int]:
    """The best requests/s over 1..processes client processes, and how many gave it."""
    ctx = mp.get_context("fork")
    best, best_k = 0.0, 1
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
        rate = (per_proc // concurrency) * concurrency * k / (time.perf_counter() - began)
        if rate > best:
            best, best_k = rate, k
    return best, best_k


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


def pingan(settings: Settings, n: int) -> float:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core = Core(settings, clock=clock)
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    began = time.perf_counter()
    stats = d.run(until_empty=True)
    elapsed = time.perf_counter() - began
    d.close()
    core.close()
    assert stats.sent == n, stats
    return n / elapsed


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
        c, procs = ceiling(base, args.messages, args.concurrency, args.ceiling_processes)
        print(
            f"ceiling : {c:,.0f} requests/s (bare requests, {procs} process(es) x "
            f"{args.concurrency} threads, best of 1-{args.ceiling_processes})"
        )
        nv = naive(settings, args.naive)
        print(f"naive   : {nv:,.0f} messages/s (sequential client.messages.create)")
        p = pingan(settings, args.messages)
        print(f"pingan  : {p:,.0f} messages/s ({args.messages:,} through the dispatcher)")
        print()
        print(f"pingan / ceiling : {p / c:.0%}  (target >= 70%, and >= 1,000/s)")
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
