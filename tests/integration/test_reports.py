"""The monthly report: the form from the database and activities, quotas, delivery, check-back."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from scheduler import activities
from scheduler.cases import record_cases
from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.exceptions import PingAnError
from scheduler.providers import make_provider
from scheduler.reports import FORM_HEADER, SMS_SENT, build_monthly_report, write_report
from scheduler.simulation import ManualClock
from scheduler.store.activities import mark_filed
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")


def _history(core: Core) -> None:
    """Two weekly firings in October, sent through the dry-run provider, and one fraud case."""
    clock = ManualClock(dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ))
    core.clock = clock
    add_recipients(core.engine, core.district, 120)
    weekly = core.campaigns.get("weekly-antifraud")
    for day in (10, 17):
        clock.set(dt.datetime(2022, 10, day, 9, 0, tzinfo=TZ))
        core.planner().fire_scheduled(weekly, clock())
        d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
        d.run(until_empty=True)
        d.close()
    clock.set(dt.datetime(2022, 10, 20, 9, 0, tzinfo=TZ))
    record_cases(
        core,
        [
            {
                "case_id": "C1",
                "occurred_at": dt.datetime(2022, 10, 19, 15, 0, tzinfo=TZ),
                "amount_yuan": 5000,
                "fraud_type": "刷单返利",
                "place": None,
                "town_id": "huanghu",
                "village_id": "qingbo",
                "imported_at": clock(),
            }
        ],
    )
    clock.set(dt.datetime(2022, 10, 31, 23, 0, tzinfo=TZ))


def test_form_counts_sms_from_the_database_and_activities_from_operators(core: Core) -> None:
    _history(core)
    activities.add(
        core.engine,
        core.district,
        "黄湖镇",
        "2022-10",
        {"households_visited": "15", "banners": 2},
        now=core.clock(),
    )
    report = build_monthly_report(core, "2022-10")
    assert [r[0] for r in report.form] == [t.name for t in core.district.towns]
    sms = FORM_HEADER.index(SMS_SENT)
    assert sum(r[sms] for r in report.form) == 240
    assert report.total[sms] == 240
    assert report.total[sms + 1] <= 240
    huanghu = next(r for r in report.form if r[0] == "黄湖镇")
    assert huanghu[1] == 15 and huanghu[3] == 2
    rules = {st.rule.id for st in report.quotas}
    assert {"town-weekly-oct", "carrier-monthly", "carrier-weekly"} <= rules
    assert report.checkback[0][0] == "C1"
    assert report.checkback[0][6] == "是"
    reached, delivered = report.checkback[0][7], report.checkback[0][8]
    assert 0 < delivered <= reached
    assert "weekly-antifraud" in report.checkback[0][9]
    # Weeks sharing a day with October: W39 (26 Sep-2 Oct) to W44 (31 Oct-6 Nov).
    assert [w.label for w in report.weeks] == [f"2022-W{n}" for n in range(39, 45)]


def test_activities_validate_and_freeze_once_filed(core: Core) -> None:
    with pytest.raises(PingAnError, match="negative"):
        activities.add(
            core.engine, core.district, "huanghu", "2022-10", {"banners": -1}, now=core.clock()
        )
    with pytest.raises(PingAnError, match="YYYY-MM"):
        activities.add(
            core.engine, core.district, "huanghu", "2022-13", {"banners": 1}, now=core.clock()
        )
    activities.add(
        core.engine, core.district, "huanghu", "2022-10", {"banners": 1}, now=core.clock()
    )
    mark_filed(core.engine, "2022-10", "x.xlsx", now=core.clock())
    with pytest.raises(PingAnError, match="filed"):
        activities.add(
            core.engine, core.district, "huanghu", "2022-10", {"banners": 2}, now=core.clock()
        )


@pytest.mark.slow
def test_workbook_opens_in_libreoffice(core: Core, tmp_path: Path) -> None:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        pytest.skip("LibreOffice is not installed")
    _history(core)
    out = write_report(build_monthly_report(core, "2022-10"), tmp_path / "report.xlsx")
    subprocess.run(
        [soffice, "--headless", "--convert-to", "pdf", "--outdir", str(tmp_path), str(out)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    pdf = tmp_path / "report.pdf"
    assert pdf.exists()
    assert pdf.read_bytes().startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page(?!s)", pdf.read_bytes())
    assert len(pages) >= 4  # one page at least per sheet
