"""Template rendering throughput: why expansion renders once per context, not per recipient.

    .venv/bin/python benchmarks/bench_render.py [--renders 20000]

In the same run: the sandboxed engine rendering a per-town template (what expansion does once
per town), the same engine rendering a per-recipient template (what it must do for each
resident when a template names the recipient), and a baseline of plain `str.format` on the
same text.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.config import load_district  # noqa: E402
from scheduler.templating import Catalogue  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=20_000)
    n = parser.parse_args().renders
    district = load_district(ROOT / "config")
    folder = Path(tempfile.mkdtemp(prefix="pingan-bench-render-"))
    for p in (ROOT / "templates" / "messages").iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "personal.sms.j2").write_text(
        "---\nchannel: sms\n---\n{{ name }}您好：{{ district_short }}提醒您，"
        "陌生来电要转账，一律是诈骗。\n",
        encoding="utf-8",
    )
    cat = Catalogue(folder, district)
    town = district.towns[0]
    ctx = cat.context(
        town=town, village=town.villages[0], recipient={"name": "张三", "segments": []}
    )

    began = time.perf_counter()
    for _ in range(n):
        cat.render("survey-notice", ctx)
    per_town = n / (time.perf_counter() - began)

    began = time.perf_counter()
    for i in range(n):
        ctx["name"] = f"居民{i}"
        cat.render("personal", ctx)
    per_recipient = n / (time.perf_counter() - began)

    fmt = "【平安上虞】{name}您好：{district_short}提醒您，陌生来电要转账，一律是诈骗。回T退订"
    began = time.perf_counter()
    for i in range(n):
        fmt.format(name=f"居民{i}", district_short="上虞")
    baseline = n / (time.perf_counter() - began)

    print(f"engine, per-town template      : {per_town:,.0f} renders/s")
    print(f"engine, per-recipient template : {per_recipient:,.0f} renders/s")
    print(f"baseline str.format            : {baseline:,.0f} renders/s")
    print(f"engine / baseline              : {per_recipient / baseline:.2%}")
    print(
        f"a 1,000,000-resident occurrence: {1_000_000 / per_recipient:.1f} s of rendering per "
        f"recipient, vs {len(district.towns)} renders (once per town)"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
