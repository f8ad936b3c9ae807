"""`pingan simulate` runs the service's own loop: the monthly report job writes each month's
report on its due day into the scratch folder, as the service would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import openpyxl
import pytest

from tests.acceptance.test_cli_acceptance import pingan

pytestmark = pytest.mark.slow


def _recipients(tmp_path: Path) -> Path:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "300", "--out", str(csv))
    return csv


def _simulate(tmp_path: Path, scratch: Path, csv: Path, **env: str) -> dict[str, object]:
    done = pingan(
        tmp_path,
        "simulate",
        "--from",
        "2022-10-01",
        "--to",
        "2022-11-30",
        "--recipients",
        str(csv),
        "--scratch",
        str(scratch),
        "--format",
        "json",
        ok=False,
        **env,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: some quota missed, as before
    data: dict[str, object] = json.loads(done.stdout)
    written = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and '"report.written"' in line
    ]
    assert [(w["month"], w["day"]) for w in written] == [
        (r["path"].split("月报-")[1][:7], r["day"])  # type: ignore[index]
        for r in data["reports"]  # type: ignore[attr-defined]
    ]
    return data


def _sms_in_report(path: Path) -> tuple[str, int]:
    """The month named on the district sheet and its SMS count (发送平安宣传短信)."""
    ws = openpyxl.load_workbook(path).worksheets[0]
    month = str(ws["D2"].value)
    return month, int(ws["B6"].value)


def _sent_in(db: Path, since: str, until: str) -> int:
    """SMS handed to the provider in [since, until) (UTC text as SQLite stores it), whatever
    came of them: the form counts what was sent, by the day it was sent."""
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM messages WHERE sent_at >= ? AND sent_at < ?", (since, until)
        ).fetchone()
    return int(n)


def test_simulate_writes_the_monthly_reports_on_their_due_days(tmp_path: Path) -> None:
    csv = _recipients(tmp_path)
    scratch = tmp_path / "sim"
    data = _simulate(tmp_path, scratch, csv)
    assert data["reports"] == [
        {"day": "2022-10-25", "path": str(scratch / "月报-2022-10.xlsx")},
        {"day": "2022-11-25", "path": str(scratch / "月报-2022-11.xlsx")},
    ]
    assert sorted(p.name for p in scratch.glob("月报-*.xlsx")) == [
        "月报-2022-10.xlsx",
        "月报-2022-11.xlsx",
    ]
    db = scratch / "simulation.db"
    month, sms = _sms_in_report(scratch / "月报-2022-10.xlsx")
    assert month == "月份：2022年10月"
    # Written on the 25th at 07:30, before the month's last firings went out: it counts what
    # had gone out by then, not the whole month.
    assert 0 < sms == _sent_in(db, "2022-09-30 16:00", "2022-10-24 23:30")
    assert sms < _sent_in(db, "2022-09-30 16:00", "2022-10-31 16:00")
    month, _sms = _sms_in_report(scratch / "月报-2022-11.xlsx")
    assert month == "月份：2022年11月"


def test_simulate_follows_the_report_settings(tmp_path: Path) -> None:
    csv = _recipients(tmp_path)
    scratch = tmp_path / "sim"
    data = _simulate(
        tmp_path, scratch, csv, PINGAN_REPORT_DUE_DAY="3", PINGAN_REPORT_PERIOD="previous"
    )
    # Each 3rd, the month before: September's on 3 October (the service would write it too),
    # October's on 3 November; November's falls due on 3 December, after the run.
    assert data["reports"] == [
        {"day": "2022-10-03", "path": str(scratch / "月报-2022-09.xlsx")},
        {"day": "2022-11-03", "path": str(scratch / "月报-2022-10.xlsx")},
    ]
    assert sorted(p.name for p in scratch.glob("月报-*.xlsx")) == [
        "月报-2022-09.xlsx",
        "月报-2022-10.xlsx",
    ]
    month, sms = _sms_in_report(scratch / "月报-2022-10.xlsx")
    assert month == "月份：2022年10月"
    # Written after the month ended: the whole of October.
    assert 0 < sms == _sent_in(scratch / "simulation.db", "2022-09-30 16:00", "2022-10-31 16:00")
