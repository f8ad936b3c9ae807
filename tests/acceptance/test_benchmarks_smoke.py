"""Every benchmark script runs end to end at a tiny size, so a schema or API change that breaks
one fails the suite instead of rotting until someone re-measures (bench_quota_status once
crashed for weeks on a renamed column). Figures at this size mean nothing and are not checked;
the scripts' full-size figures live in benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("PINGAN_TEST_POSTGRES_URL", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("bench_render.py", ["--renders", "200"], "renders/s"),
        (
            "bench_quota_status.py",
            ["--messages", "2000", "--towns", "5", "--runs", "1"],
            "bump_counters",
        ),
        ("bench_import.py", ["--rows", "2000"], "import / baseline"),
        (
            "bench_dashboard.py",
            ["--messages", "2000", "--residents", "2000", "--towns", "5", "--runs", "1"],
            "goal under 300 ms",
        ),
        ("bench_expand.py", ["--recipients", "2000", "--naive", "50"], "pingan / ceiling"),
        ("bench_reconcile.py", ["--stuck", "50", "--log-lines", "200"], "reconcile"),
        ("bench_expand_process.py", ["--recipients", "500"], "pingan / raw"),
    ],
)
def test_benchmark_runs_at_tiny_size(
    script: str, args: list[str], expect: str, tmp_path: Path
) -> None:
    out = _run([f"benchmarks/{script}", *args], tmp_path)
    assert expect in out


def test_dispatch_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    out = _run(
        [
            "benchmarks/bench_dispatch.py",
            "--messages",
            "300",
            "--naive",
            "50",
            "--port",
            str(_free_port()),
            "--latency-ms",
            "5",
            "--jitter-ms",
            "5",
            "--ceiling-processes",
            "2",
        ],
        tmp_path,
    )
    assert "pingan / ceiling" in out


@pytest.mark.parametrize("gateway", ["aliyun", "tencent"])
def test_gateway_benchmark_runs_at_tiny_size(gateway: str, tmp_path: Path) -> None:
    out = _run(
        [
            "benchmarks/bench_gateway.py",
            "--gateway",
            gateway,
            "--messages",
            "400",
            "--concurrency",
            "2",
            "--port",
            str(_free_port()),
        ],
        tmp_path,
    )
    assert "sdk / ceiling" in out and "pingan / ceiling" in out


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server (set PINGAN_TEST_POSTGRES_URL)")
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("bench_import.py", ["--rows", "2000"], "import / COPY"),
        (
            "bench_quota_status.py",
            ["--messages", "2000", "--towns", "5", "--runs", "1"],
            "bump_counters",
        ),
        (
            "bench_dashboard.py",
            ["--messages", "2000", "--residents", "2000", "--towns", "5", "--runs", "1"],
            "goal under 300 ms",
        ),
        ("bench_expand.py", ["--recipients", "2000", "--naive", "50"], "pingan / ceiling"),
        ("bench_reconcile.py", ["--stuck", "50", "--log-lines", "200"], "reconcile"),
        ("bench_expand_process.py", ["--recipients", "500"], "pingan / raw"),
        (
            "bench_dispatch.py",
            [
                *("--messages", "300", "--naive", "20", "--latency-ms", "5", "--jitter-ms", "5"),
                *("--ceiling-processes", "2", "--workers", "2", "--port", str(_free_port())),
            ],
            "workers / ceiling",
        ),
    ],
)
def test_benchmark_runs_on_postgres(
    script: str, args: list[str], expect: str, tmp_path: Path
) -> None:
    """The same scripts on PostgreSQL, each in scratch databases it drops again."""
    out = _run([f"benchmarks/{script}", *args, "--database-url", PG_URL], tmp_path)
    assert expect in out
    assert "PostgreSQL" in out or script == "bench_reconcile.py"


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="no PostgreSQL server (set PINGAN_TEST_POSTGRES_URL)")
def test_province_benchmark_runs_on_postgres(tmp_path: Path) -> None:
    """Expansion and three dispatcher processes on a partitioned scratch database: every
    message reaches the fake once, and the figures the README's paragraph uses are printed."""
    out = _run(
        [
            "benchmarks/bench_province.py",
            "--database-url",
            PG_URL,
            "--recipients",
            "600",
            "--workers",
            "3",
            "--latency-ms",
            "5",
            "--json",
        ],
        tmp_path,
    )
    figures = json.loads(out)
    assert figures["queued"] == figures["fake_created"] == 600
    assert figures["fake_duplicates"] == 0
    assert figures["dispatch_exit_codes"] == [0, 0, 0]
    assert "messages_p2022_10" in figures["partitions"]
    assert figures["messages_bytes"] > 0 and len(figures["dispatch_rss_mb"]) == 3
    # October's messages; their attempts were made at the real clock, in this month.
    assert figures["pruned_rows"] == 600
    assert "messages_p2022_10" in figures["partitions_dropped"]
