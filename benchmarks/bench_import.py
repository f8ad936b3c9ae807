"""Recipient import speed and memory: 1,000,000 synthetic rows into a fresh SQLite file.

    .venv/bin/python benchmarks/bench_import.py [--rows 1000000] [--markdown benchmarks/README.md]

Each measurement runs in its own child process, so its peak resident memory (ru_maxrss from
os.wait4) is its own. Measured in the same run:
- `pingan recipients import` (import_recipients_file): detection, validation, normalisation,
  town/village checks, rejects, chunked upserts; on a fresh database, then again (all updates);
- a small file (a tenth of the rows) through the same path: peak memory must not grow with the
  file;
- the ceiling: a raw sqlite3 executemany of the same rows, no validation, same schema and
  pragmas, same ON CONFLICT upsert in the same chunks.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 5000


def child_import(csv_path: Path, db: Path) -> dict[str, Any]:
    from scheduler.config import load_district
    from scheduler.db import make_engine, upgrade
    from scheduler.recipients import import_recipients_file

    district = load_district(ROOT / "config")
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    began = time.perf_counter()
    summary = import_recipients_file(engine, district, csv_path)
    seconds = time.perf_counter() - began
    engine.dispose()
    return {"seconds": seconds, **summary.to_dict()}


def child_baseline(csv_path: Path, db: Path) -> dict[str, Any]:
    from scheduler.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)  # the same table and indexes
    engine.dispose()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    sql = (
        "INSERT INTO recipients (phone, name, town_id, village_id, household, carrier, "
        "residence, segments, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (phone) DO UPDATE SET name=excluded.name, town_id=excluded.town_id, "
        "village_id=excluded.village_id, household=excluded.household, "
        "carrier=excluded.carrier, residence=excluded.residence, segments=excluded.segments, "
        "updated_at=excluded.updated_at"
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    began = time.perf_counter()
    rows = 0
    with csv_path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[tuple[Any, ...]] = []
        for phone, town, village, name, household, carrier, residence, segs in reader:
            batch.append(
                (
                    phone,
                    name,
                    town,
                    village,
                    household,
                    carrier,
                    residence or None,
                    f";{segs};" if segs else "",
                    now,
                    now,
                )
            )
            if len(batch) >= CHUNK:
                with conn:
                    conn.executemany(sql, batch)
                rows += len(batch)
                batch.clear()
        if batch:
            with conn:
                conn.executemany(sql, batch)
            rows += len(batch)
    seconds = time.perf_counter() - began
    conn.close()
    return {"seconds": seconds, "rows": rows}


def run_child(kind: str, csv_path: Path, db: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; add its own peak RSS in MB."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, str(csv_path), str(db), str(out)],
        cwd=ROOT,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} failed")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def generate(rows: int, path: Path) -> float:
    from scheduler.config import load_district
    from scheduler.sample_data import write_csv

    began = time.perf_counter()
    write_csv(load_district(ROOT / "config"), path, rows, seed=1)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--markdown", type=Path, help="append a '## Recipient import' section")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, csv_path, db, out = args.child
        fn = child_import if kind == "import" else child_baseline
        Path(out).write_text(json.dumps(fn(Path(csv_path), Path(db)), default=str))
        return

    with tempfile.TemporaryDirectory(prefix="pingan-bench-") as tmp:
        work = Path(tmp)
        big, small = work / "big.csv", work / "small.csv"
        gen_s = generate(args.rows, big)
        generate(args.rows // 10, small)
        size_mb = big.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:.1f} MB) in {gen_s:.1f} s")

        base = run_child("baseline", big, work / "baseline.db")
        fresh = run_child("import", big, work / "import.db")
        again = run_child("import", big, work / "import.db")
        tenth = run_child("import", small, work / "small.db")
        assert fresh["imported"] == args.rows and fresh["rejected"] == 0, fresh
        assert again["updated"] == args.rows and again["imported"] == 0, again

    def rate(r: dict[str, Any], n: int) -> str:
        return f"{n / r['seconds']:,.0f}"

    n = args.rows
    lines = [
        "| run | rows | elapsed | rows/s | peak RSS |",
        "|---|---|---|---|---|",
        f"| baseline: raw sqlite3 executemany upsert, no validation | {n:,} | "
        f"{base['seconds']:.1f} s | {rate(base, n)} | {base['peak_rss_mb']:.0f} MB |",
        f"| `import_recipients_file`, fresh database | {n:,} | {fresh['seconds']:.1f} s | "
        f"{rate(fresh, n)} | {fresh['peak_rss_mb']:.0f} MB |",
        f"| `import_recipients_file`, same file again (all updates) | {n:,} | "
        f"{again['seconds']:.1f} s | {rate(again, n)} | {again['peak_rss_mb']:.0f} MB |",
        f"| `import_recipients_file`, a tenth of the rows | {n // 10:,} | "
        f"{tenth['seconds']:.1f} s | {rate(tenth, n // 10)} | {tenth['peak_rss_mb']:.0f} MB |",
    ]
    ratio = fresh["seconds"] / base["seconds"]
    print("\n".join(lines))
    print(f"import / baseline: {ratio:.2f}x the ceiling's time")
    if args.markdown:
        cmd = f"`.venv/bin/python benchmarks/bench_import.py --rows {n}`"
        machine = (
            f"{os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{platform.machine()}"
        )
        section = [
            "",
            "## Recipient import",
            "",
            f"{cmd} on {dt.date.today().isoformat()}; {machine}. A synthetic CSV of {n:,} rows "
            f"({size_mb:.0f} MB, UTF-8, generated by `scheduler.sample_data`) imported into a "
            "fresh SQLite file. Each run is a separate process; peak RSS is that process's "
            "`ru_maxrss` (interpreter and SQLAlchemy included). The baseline, measured in the "
            "same run, is the ceiling: a raw `sqlite3` executemany of the same rows with the "
            f"same upsert, chunks of {CHUNK:,}, schema and pragmas, and no validation at all.",
            "",
            *lines,
            "",
            f"The import takes {ratio:.2f}× the ceiling's time for encoding detection (a "
            "streamed decode pass), number normalisation, carrier detection, town/village "
            "checks, segment parsing and the inserted-vs-updated pre-query. Peak memory is "
            "the same for a tenth of the rows: it does not grow with the file.",
        ]
        with args.markdown.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
