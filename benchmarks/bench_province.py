"""Province scale: expand and dispatch N recipients with several dispatcher processes.

    .venv/bin/python benchmarks/bench_province.py --database-url postgresql+psycopg://... \\
        --recipients 200000 --workers 3 --latency-ms 20

What runs, each step as its own `pingan` process the way an office runs it, on a scratch
database (dropped at the end unless --keep):
- load: N synthetic residents (tests/factories), in chunks; not part of the figures;
- partitions: the service's nightly job for the campaign's month (PostgreSQL: the month's
  partitions exist before the send, as the job keeps them three months ahead);
- expand: `pingan campaigns run weekly-antifraud --at 2022-10-10T09:00`;
- dispatch: `--workers` processes of `pingan dispatch --until-empty` at once, through the
  official Twilio client against scheduler/testing/fake_twilio.py answering each create after
  --latency-ms (plus up to --jitter-ms);
- prune (unless --no-prune): `pingan db prune --before 2022-11`, archiving the month to gzip'd
  CSV and dropping its partitions: the retention job's cost and the archive's bytes per row.
  The dispatchers run on the real clock, so the attempts belong to this month and stay: the
  prune covers October's messages (most of the bytes), not their attempts.

Reported: wall time and rows/s of each step, peak memory (max RSS) of every process, what the
fake received (and any duplicate), the database's size and the bytes per message (messages,
attempts and their indexes, divided by the messages). Rate limits are raised out of the way:
this measures capacity, not the configured pacing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TZ = ZoneInfo("Asia/Shanghai")
CAMPAIGN = "weekly-antifraud"
AT = "2022-10-10T09:00"
LOAD_CHUNK = 50_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Exit code and peak memory (MB) of one child, from its own rusage."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def _pingan(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )


def load(url: str, n: int) -> None:
    """N residents, in chunks so the loader's memory stays small."""
    from scheduler.config import load_district
    from scheduler.db import make_engine, upgrade
    from tests.factories import add_recipients

    engine = make_engine(url)
    upgrade(engine)
    district = load_district(ROOT / "config")
    for start in range(0, n, LOAD_CHUNK):
        add_recipients(engine, district, min(LOAD_CHUNK, n - start), start=start)
    engine.dispose()


def partitions(url: str) -> list[str]:
    import datetime as dt

    from scheduler.db import make_engine
    from scheduler.store.retention import ensure_months

    engine = make_engine(url)
    created = ensure_months(engine, dt.date.fromisoformat(AT[:10]), 3, TZ)
    engine.dispose()
    return created


def sizes(url: str) -> dict[str, Any]:
    """Database size, rows and the bytes messages and attempts take (indexes included)."""
    from sqlalchemy import text

    from scheduler.db import make_engine

    engine = make_engine(url)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in ("messages", "attempts"):
            out[f"{table}_rows"] = int(
                conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            )
        if engine.dialect.name == "postgresql":
            out["database_bytes"] = int(
                conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            )
            for table in ("messages", "attempts"):
                out[f"{table}_bytes"] = int(
                    conn.execute(
                        text(
                            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                            "FROM pg_partition_tree(:t)"
                        ),
                        {"t": table},
                    ).scalar_one()
                )
            out["partitions"] = [
                str(r[0])
                for r in conn.execute(
                    text(
                        "SELECT relid::regclass::text FROM pg_partition_tree('messages') "
                        "WHERE isleaf ORDER BY 1"
                    )
                )
            ]
            out["recipients_bytes"] = int(
                conn.execute(text("SELECT pg_total_relation_size('recipients')")).scalar_one()
            )
        else:
            assert engine.url.database
            out["database_bytes"] = Path(engine.url.database).stat().st_size
        states = conn.execute(text("SELECT state, count(*) FROM messages GROUP BY state")).all()
        out["states"] = {str(s): int(c) for s, c in states}
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (a scratch database is made on it); default: a SQLite file",
    )
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=3, help="dispatcher processes")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake's latency")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus up to this much")
    parser.add_argument("--concurrency", type=int, default=16, help="sends in flight per worker")
    parser.add_argument("--no-prune", action="store_true", help="skip the prune step")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    args = parser.parse_args()
    from benchmarks._db import ScratchDatabases, describe
    from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN

    work = Path(tempfile.mkdtemp(prefix="pingan-bench-province-"))
    dbs = ScratchDatabases(work, args.database_url)
    url = dbs.fresh("province")
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_twilio",
            "--port",
            str(_free_port()),
            "--latency-ms",
            str(args.latency_ms),
            "--jitter-ms",
            str(args.jitter_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    base = fake.stdout.readline().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(work / "var"),
        PINGAN_DATABASE_URL=url,
        PINGAN_CONFIG_DIR=str(ROOT / "config"),
        PINGAN_TEMPLATES_DIR=str(ROOT / "templates" / "messages"),
        PINGAN_LOG_FORMAT="json",
        PINGAN_LOG_LEVEL="WARNING",
        PINGAN_PROVIDER="twilio",
        PINGAN_TWILIO__ACCOUNT_SID=ACCOUNT_SID,
        PINGAN_TWILIO__AUTH_TOKEN=AUTH_TOKEN,
        PINGAN_TWILIO__MESSAGING_SERVICE_SID="MG" + "1" * 32,
        PINGAN_TWILIO__BASE_URL=base,
        # Capacity, not pacing: no rate limit in the way, any hour of the day allowed.
        PINGAN_DISPATCH__RATE_PER_SECOND="1000000",
        PINGAN_DISPATCH__CONCURRENCY=str(args.concurrency),
        PINGAN_DISPATCH__BATCH_SIZE="1000",
        PINGAN_SENDING_HOURS="00:00-23:59",
    )
    log = work / "pingan.log"
    figures: dict[str, Any] = {
        "recipients": args.recipients,
        "workers": args.workers,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "concurrency": args.concurrency,
        "database": describe(args.database_url),
    }
    try:
        t0 = time.perf_counter()
        load(url, args.recipients)
        figures["load_s"] = time.perf_counter() - t0
        figures["partitions_created"] = partitions(url)

        t0 = time.perf_counter()
        proc = _pingan(env, "campaigns", "run", CAMPAIGN, "--at", AT, "--format", "json", log=log)
        out = proc.stdout.read() if proc.stdout else ""
        rc, rss = _wait(proc)
        figures["expand_s"] = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"expansion failed ({rc}); see {log}\n{log.read_text()[-3000:]}")
        figures["expand_rss_mb"] = rss
        expanded = json.loads(out)
        figures["queued"] = int(expanded.get("queued", 0))

        t0 = time.perf_counter()
        workers = [
            _pingan(env, "dispatch", "--until-empty", "--format", "json", log=log)
            for _ in range(args.workers)
        ]
        results = [_wait(w) for w in workers]
        figures["dispatch_s"] = time.perf_counter() - t0
        figures["dispatch_rss_mb"] = [r[1] for r in results]
        figures["dispatch_exit_codes"] = [r[0] for r in results]
        with urllib.request.urlopen(f"{base}/_fake/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
        figures["fake_created"] = stats["created"]
        figures["fake_duplicates"] = stats["duplicates"]
        figures.update(sizes(url))
        if not args.no_prune:
            t0 = time.perf_counter()
            proc = _pingan(env, "db", "prune", "--before", "2022-11", "--format", "json", log=log)
            out = proc.stdout.read() if proc.stdout else ""
            rc, rss = _wait(proc)
            figures["prune_s"] = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"prune failed ({rc}); see {log}\n{log.read_text()[-3000:]}")
            figures["prune_rss_mb"] = rss
            (month,) = json.loads(out)["months"]
            figures["pruned_rows"] = month["messages"] + month["attempts"]
            figures["archive_bytes"] = sum(Path(a).stat().st_size for a in month["archives"])
            figures["partitions_dropped"] = month["partitions_dropped"]
    finally:
        fake.terminate()
        fake.wait()
        if not args.keep:
            dbs.drop_all()
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {url} ({work})", file=sys.stderr)
    report(figures, json_out=args.json)
    if figures["fake_duplicates"] or figures["fake_created"] != figures["queued"]:
        raise SystemExit("the fake did not receive each queued message exactly once")


def report(f: dict[str, Any], *, json_out: bool) -> None:
    n = f["queued"] or 1
    f["expand_rows_per_s"] = f["queued"] / f["expand_s"]
    f["dispatch_msgs_per_s"] = f["fake_created"] / f["dispatch_s"]
    rows_bytes = f.get("messages_bytes", 0) + f.get("attempts_bytes", 0)
    f["bytes_per_message"] = (rows_bytes or f["database_bytes"]) / n
    if json_out:
        print(json.dumps(f, indent=2))
        return
    print(
        f"{f['database']}; {f['recipients']:,} recipients; {f['workers']} dispatcher processes "
        f"x {f['concurrency']} in flight; fake at {f['latency_ms']:g} ms"
        + (f" + up to {f['jitter_ms']:g} ms" if f["jitter_ms"] else "")
    )
    print(f"load      : {f['load_s']:.1f} s (not measured below)")
    print(
        f"expand    : {f['expand_s']:.1f} s, {f['expand_rows_per_s']:,.0f} rows/s, "
        f"{f['queued']:,} queued, peak {f['expand_rss_mb']:.0f} MB"
    )
    print(
        f"dispatch  : {f['dispatch_s']:.1f} s, {f['dispatch_msgs_per_s']:,.0f} msg/s, "
        f"peak {', '.join(f'{m:.0f}' for m in f['dispatch_rss_mb'])} MB per worker, "
        f"exit codes {f['dispatch_exit_codes']}"
    )
    print(
        f"total     : {f['expand_s'] + f['dispatch_s']:.1f} s expand + dispatch; "
        f"the fake received {f['fake_created']:,}, duplicates {f['fake_duplicates']}"
    )
    print(f"states    : {f['states']}")
    size = f"database  : {f['database_bytes'] / 1e6:,.0f} MB"
    if "messages_bytes" in f:
        size += (
            f"; messages {f['messages_bytes'] / 1e6:,.0f} MB + attempts "
            f"{f['attempts_bytes'] / 1e6:,.0f} MB (indexes included) = "
            f"{f['bytes_per_message']:,.0f} bytes per message; recipients "
            f"{f['recipients_bytes'] / 1e6:,.0f} MB; partitions {', '.join(f['partitions'])}"
        )
    else:
        size += f" = {f['bytes_per_message']:,.0f} bytes per message (whole file)"
    print(size)
    if "prune_s" in f:
        print(
            f"prune     : {f['prune_s']:.1f} s for {f['pruned_rows']:,} rows (October's "
            f"messages), archive {f['archive_bytes'] / 1e6:,.1f} MB = "
            f"{f['archive_bytes'] / n:,.0f} bytes per message, peak {f['prune_rss_mb']:.0f} MB, "
            f"dropped {', '.join(f['partitions_dropped']) or 'no partition'}"
        )
    print(f"machine   : {platform.platform()}, {os.cpu_count()} CPUs, {platform.python_version()}")


if __name__ == "__main__":
    main()
