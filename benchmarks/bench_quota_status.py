"""Quota status over 10,000,000 messages and 1,000 towns on SQLite: counters against a naive scan.

Builds, in a scratch folder, a district of 1,000 towns (3 villages each) and a SQLite database
at the current schema holding N messages sent 1 October - 31 December 2022 (the raw table, with
all its indexes) and the `send_counters` rows those messages make. Then it times
`scheduler.quotas.attainment` (what `pingan quota status` runs) for a weekly and a monthly town
rule and a monthly carrier rule, against the naive query over `messages`
(COUNT(*) GROUP BY town over the `sent_at` index) for the same windows in the same run, checks
both give the same counts, and times `bump_counters` as the dispatcher calls it.

    .venv/bin/python benchmarks/bench_quota_status.py [--messages 10000000] [--towns 1000]

Prints the figures and appends a section to benchmarks/README.md (--no-readme to skip).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from sqlalchemy import text

from scheduler.core import Core
from scheduler.db import transaction
from scheduler.quotas import (
    AttainmentRow,
    QuotaRule,
    Window,
    attainment,
    find_rule,
    load_rules,
    window_labelled,
)
from scheduler.settings import Settings
from scheduler.store.counters import CounterIncrement, bump_counters

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
DAYS = 92  # 1 October - 31 December 2022
START_UTC = "2022-09-30 16:00:00"  # local midnight of 1 October in Asia/Shanghai


def write_config(folder: Path, towns: int) -> None:
    """A district of `towns` towns and the town and carrier rules of config/quotas.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    district = yaml.safe_load((ROOT / "config" / "district.yaml").read_text("utf-8"))
    district["towns"] = [
        {
            "id": f"t{i:04d}",
            "name": f"第{i}镇",
            # 10M messages over 13 weeks is ~770 a town a week: some towns meet 50%, some not.
            "population": 1000 + (i * 7919) % 2000,
            "households": 400 + (i * 31) % 400,
            "villages": [
                {"id": f"v{j}", "name": f"第{i}镇{j}村", "population": 300 + j * 10}
                for j in range(3)
            ],
        }
        for i in range(towns)
    ]
    (folder / "district.yaml").write_text(
        yaml.safe_dump(district, allow_unicode=True), encoding="utf-8"
    )
    rules = yaml.safe_load((ROOT / "config" / "quotas.yaml").read_text("utf-8"))["rules"]
    rules = [r for r in rules if r["subject"] in ("town", "carrier")]
    (folder / "quotas.yaml").write_text(
        yaml.safe_dump({"rules": rules}, allow_unicode=True), encoding="utf-8"
    )


def build(core: Core, messages: int, towns: int) -> dict[str, float]:
    """Messages spread evenly over the quarter, scattered over towns, villages and carriers;
    values chosen so every index of the real schema is written in key order (fast to load)."""
    figures: dict[str, float] = {}
    engine = core.engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO message_bodies (id, digest, text, template_name, template_hash,"
                " chars, segments) VALUES (1, 'bench', '【平安上虞】谨防电信网络诈骗', 'bench',"
                " 'bench', 15, 1)"
            )
        )
        conn.execute(
            text(
                "WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s"
                " WHERE value < :n)"
                " INSERT INTO occurrences (id, campaign, scheduled_at, kind, target, channel,"
                " priority, state, paused, queued, excluded, cursor, created_at)"
                " SELECT value, 'bench', datetime(:start, '+' || value || ' hours') || '.000000',"
                " 'scheduled', '{}', 'sms', 0, 'done', 0, 0, '{}', 0, :start || '.000000'"
                " FROM s"
            ),
            {"n": DAYS * 24, "start": START_UTC},
        )
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text(
                "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :m - 1)"
                " INSERT INTO messages (id, occurrence_id, recipient_id, phone, town_id,"
                " village_id, carrier, body_id, segments, rank, state, attempts, provider,"
                " queued_at, sent_at, status_at, period)"
                " SELECT n + 1, 1 + (n * :secs / :m) / 3600, n + 1, '13800000000',"
                " 't' || printf('%04d', (n * 7919) % :towns), 'v' || ((n / 7) % 3),"
                " CASE n % 3 WHEN 0 THEN 'mobile' WHEN 1 THEN 'unicom' ELSE 'telecom' END,"
                " 1, 1, 0, CASE WHEN n % 20 = 0 THEN 'undelivered' ELSE 'delivered' END, 1,"
                " 'dryrun', ts, ts, ts, date(ts, '+8 hours', 'start of month')"
                " FROM (SELECT n, datetime(:start, '+' || (n * :secs / :m) || ' seconds')"
                " || '.000000' AS ts FROM s)"
            ),
            {"m": messages, "secs": DAYS * 86400, "towns": towns, "start": START_UTC},
        )
    figures["load_messages_s"] = time.perf_counter() - t0
    # The counters those messages make, by local day (UTC+8: China keeps no summer time).
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO send_counters (day, town_id, village_id, carrier, sent, delivered)"
                " SELECT date(sent_at, '+8 hours'), town_id, village_id, carrier, COUNT(*),"
                " SUM(state = 'delivered') FROM messages GROUP BY 1, 2, 3, 4"
            )
        )
        figures["counter_rows"] = conn.execute(
            text("SELECT COUNT(*) FROM send_counters")
        ).scalar_one()
    figures["load_counters_s"] = time.perf_counter() - t0
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return figures


def timed(fn: Callable[[], T], runs: int) -> tuple[float, float, T]:
    """(first run, median of the following runs) in seconds, and the last result."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), result


def naive(core: Core, rule_subject: str, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    col = "town_id" if rule_subject == "town" else "carrier"
    with core.engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {col}, COUNT(*) FROM messages WHERE sent_at >= :a AND sent_at < :b"
                f" GROUP BY {col}"
            ),
            {
                "a": start.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "b": end.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
            },
        )
        return {k: int(v) for k, v in rows}


def bump_throughput(core: Core, towns: int, n: int = 100_000, batch: int = 500) -> float:
    """Increments a second through bump_counters, in dispatcher-sized transactions."""
    day = dt.date(2023, 1, 2)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        with transaction(core.engine) as s:
            bump_counters(
                s,
                [
                    CounterIncrement(day, f"t{(k * 7919) % towns:04d}", f"v{k % 3}", "mobile", 1)
                    for k in range(i, min(n, i + batch))
                ],
            )
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--towns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-quota-"))
    try:
        cfg = scratch / "config"
        write_config(cfg, args.towns)
        settings = Settings(data_dir=scratch / "var", config_dir=cfg, log_format="json")
        core = Core(settings)
        print(f"building {args.messages:,} messages, {args.towns:,} towns in {scratch} ...")
        built = build(core, args.messages, args.towns)
        print(
            f"  messages loaded in {built['load_messages_s']:.1f} s; "
            f"{int(built['counter_rows']):,} counter rows in {built['load_counters_s']:.1f} s"
        )
        db_mb = (scratch / "var" / "pingan.db").stat().st_size / 1e6
        district = core.district
        rules = load_rules(cfg, district)
        tz = settings.tz
        now = dt.datetime(2023, 1, 10, tzinfo=dt.UTC)
        cases = [
            ("town-weekly-oct", "2022-W41"),
            ("town-monthly-novdec", "2022-11"),
            ("carrier-monthly", "2022-12"),
        ]
        results = []
        for rule_id, label in cases:
            rule = find_rule(rules, rule_id)
            window = window_labelled(rule, label)
            assert window is not None
            core.engine.dispose()  # a fresh connection, as a CLI call would have

            def status(rule: QuotaRule = rule, window: Window = window) -> list[AttainmentRow]:
                return attainment(core.engine, rule, window, district, now=now, tz=tz)

            def scan(rule: QuotaRule = rule, window: Window = window) -> dict[str, int]:
                return naive(core, rule.subject, *window.bounds(tz))

            first, med, rows = timed(status, args.runs)
            nfirst, nmed, counts = timed(scan, max(1, args.runs // 2))
            got = {r.subject.key: r.own for r in rows}
            assert got == {k: counts.get(k, 0) for k in got}, "counters disagree with messages"
            results.append((rule_id, label, len(rows), sum(got.values()), first, med, nfirst, nmed))
            print(
                f"  {rule_id} {label}: {len(rows)} subjects, {sum(got.values()):,} messages;"
                f" counters first {first * 1000:.0f} ms, median {med * 1000:.0f} ms;"
                f" naive scan first {nfirst * 1000:.0f} ms, median {nmed * 1000:.0f} ms;"
                f" ratio {nmed / med:.1f}x"
            )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")},
            "PINGAN_DATA_DIR": str(scratch / "var"),
            "PINGAN_CONFIG_DIR": str(cfg),
            "PINGAN_LOG_FORMAT": "json",
        }
        t0 = time.perf_counter()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "scheduler",
                "quota",
                "status",
                "--rule",
                "town-weekly-oct",
                "--week",
                "2022-W41",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        cli_s = time.perf_counter() - t0
        print(
            f"  `pingan quota status --rule town-weekly-oct --week 2022-W41`: {cli_s:.2f} s "
            f"end to end (interpreter start-up included), {len(cli.stdout):,} bytes of JSON"
        )
        rate = bump_throughput(core, args.towns)
        print(f"  bump_counters: {rate:,.0f} increments/s in transactions of 500")
        core.close()
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.no_readme:
        return
    lines = [
        "",
        "## Quota status",
        "",
        "`.venv/bin/python benchmarks/bench_quota_status.py"
        f" --messages {args.messages} --towns {args.towns}` on {dt.date.today()}; "
        f"{os.cpu_count()} CPUs (`nproc` {_nproc()}), Python {platform.python_version()}, "
        f"SQLite {_sqlite_version()}, {platform.machine()}. Database {db_mb:,.0f} MB: "
        f"{args.messages:,} messages with the schema's indexes and "
        f"{int(built['counter_rows']):,} `send_counters` rows (day × town × village × carrier).",
        "",
        "`attainment()` (what `pingan quota status` runs) sums counters; the baseline, measured"
        " in the same run, is the naive `SELECT town_id, COUNT(*) FROM messages WHERE sent_at"
        " in window GROUP BY town_id` over the `(sent_at, town_id)` index. Both gave the same"
        " counts.",
        "",
        "| rule | window | subjects | messages in window | counters: first / median | "
        "naive scan: first / median | ratio (median) |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r} | {w} | {n} | {m:,} | {f * 1000:.0f} ms / {md * 1000:.0f} ms | "
            f"{nf * 1000:.0f} ms / {nm * 1000:.0f} ms | {nm / md:.1f}× |"
            for r, w, n, m, f, md, nf, nm in results
        ],
        "",
        f"End to end, `pingan quota status --rule town-weekly-oct --week 2022-W41 --format json`"
        f" took {cli_s:.2f} s including interpreter start-up. `bump_counters` took"
        f" {rate:,.0f} increments/s in transactions of 500 increments.",
        "",
    ]
    with (ROOT / "benchmarks" / "README.md").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print("appended to benchmarks/README.md")


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


if __name__ == "__main__":
    main()
