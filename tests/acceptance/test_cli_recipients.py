"""`pingan recipients` end to end, in a subprocess, on both backends."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

from scheduler.store.recipients import is_opted_out, stats

ROOT = Path(__file__).resolve().parents[2]


def pingan(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(tmp_path / "var"),
        PINGAN_DATABASE_URL=db_url,
        PINGAN_CONFIG_DIR=str(ROOT / "config"),
        PINGAN_LOG_FORMAT="json",
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "recipients", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_import_broken_sample_then_stats_and_opt_out(tmp_path: Path, db_url: str) -> None:
    src = shutil.copy(ROOT / "recipients" / "broken-sample.csv", tmp_path / "list.csv")
    done = pingan(tmp_path, db_url, "import", str(src), "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["encoding"] == "gb18030"
    assert (summary["rows"], summary["imported"], summary["updated"], summary["rejected"]) == (
        20,
        8,
        2,
        10,
    )
    assert summary["by_carrier"] == {"mobile": 4, "telecom": 4, "unicom": 2}
    assert summary["rejects_file"] == str(tmp_path / "list.rejects.csv")
    rejects = list(
        csv.DictReader(io.StringIO((tmp_path / "list.rejects.csv").read_text("utf-8-sig")))
    )
    assert len(rejects) == 10
    # Personal data: no full number on the terminal.
    assert "13800138000" not in done.stdout + done.stderr

    opt = pingan(tmp_path, db_url, "opt-out", "138 0013 8000", "--source", "hotline")
    assert opt.returncode == 0, opt.stderr
    assert "138****8000" in opt.stdout
    assert "13800138000" not in opt.stdout

    again = pingan(tmp_path, db_url, "import", str(src), "--format", "json")
    assert json.loads(again.stdout)["updated"] == 10

    shown = pingan(tmp_path, db_url, "stats", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["total"] == 8
    assert data["opted_out"] == 1
    assert data["by_town"]["huanghu"] == 5
    table = pingan(tmp_path, db_url, "stats")
    assert table.returncode == 0, table.stderr
    assert "By segment" in table.stdout


def test_opt_out_from_a_file(tmp_path: Path, db_url: str, engine: Engine) -> None:
    f = tmp_path / "refused.csv"
    f.write_bytes("手机号,备注\r\n13800138000,电话投诉\r\n+86 186 0000 0001,\r\n\r\n".encode("gbk"))
    done = pingan(tmp_path, db_url, "opt-out", "--file", str(f), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"recorded": 2, "new": 2, "cancelled": 0, "rejected": []}
    assert is_opted_out(engine, "13800138000")
    assert is_opted_out(engine, "18600000001")
    assert stats(engine)["opted_out"] == 2


def test_unreadable_file_exits_non_zero_naming_file_line_and_reason(
    tmp_path: Path, db_url: str
) -> None:
    missing = pingan(tmp_path, db_url, "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1
    assert "nope.csv" in missing.stderr and "cannot open" in missing.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("mobile_no,town\n13800138000,huanghu\n", encoding="utf-8")
    header = pingan(tmp_path, db_url, "import", str(bad), "--format", "json")
    assert header.returncode == 1
    assert "bad.csv, line 1" in header.stderr and "village" in header.stderr
    assert header.stdout == ""

    forced = pingan(
        tmp_path,
        db_url,
        "import",
        str(ROOT / "recipients" / "broken-sample.csv"),
        "--encoding",
        "utf-8",
    )
    assert forced.returncode == 1
    assert "broken-sample.csv, line 1" in forced.stderr
    assert "cannot decode as utf-8" in forced.stderr


def test_generate_writes_a_deterministic_synthetic_csv(tmp_path: Path, db_url: str) -> None:
    a = pingan(tmp_path, db_url, "generate", "--count", "50", "--seed", "5", "--out", "a.csv")
    assert a.returncode == 0, a.stderr
    b = pingan(tmp_path, db_url, "generate", "--count", "50", "--seed", "5")
    assert b.returncode == 0, b.stderr
    written = (tmp_path / "a.csv").read_text("utf-8")
    assert written.replace("\r\n", "\n") == b.stdout.replace("\r\n", "\n")
    rows = list(csv.DictReader(io.StringIO(written)))
    assert len(rows) == 50
    imported = pingan(tmp_path, db_url, "import", "a.csv", "--format", "json")
    assert json.loads(imported.stdout)["imported"] == 50
