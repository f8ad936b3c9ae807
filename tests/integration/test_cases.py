"""Fraud cases: import, must-reach rules (三必讲), alerts at the next allowed time, once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.cases import amount_band, import_cases
from scheduler.core import Core
from scheduler.models import Message, MessageBody, Occurrence
from scheduler.simulation import ManualClock
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
HEADER = "case_id,time,amount,fraud_type,place,town,village\n"


def _write(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_big_loss_triggers_one_alert_at_next_allowed_hour(core: Core, tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime(2022, 10, 12, 21, 30, tzinfo=TZ))  # after sending hours
    core.clock = clock
    add_recipients(core.engine, core.district, 200)
    path = _write(
        tmp_path,
        "cases.csv",
        [
            "A001,2022-10-12T15:00,120000,刷单返利,网上,黄湖镇,清波",
            "A002,2022-10-12T16:00,5000,冒充客服,网上,huanghu,hushan",
            "A003,not-a-time,5000,冒充客服,网上,huanghu,hushan",
            "A004,2022-10-12T16:00,5000,冒充客服,网上,huanghu,nowhere",
        ],
    )
    result = import_cases(core, path)
    assert (result.inserted, len(result.rejected)) == (2, 2)
    assert [r["line"] for r in result.rejected] == [4, 5]
    assert len(result.alerts) == 1
    alert = result.alerts[0]
    assert (alert["village"], alert["rule"]) == ("qingbo", "single_loss")
    with Session(core.engine) as s:
        occ = s.scalars(select(Occurrence)).one()
        assert occ.campaign == "local-case-alert:huanghu/qingbo"
        assert occ.scheduled_at == dt.datetime(2022, 10, 13, 8, 0, tzinfo=TZ)
        villages = set(s.scalars(select(Message.village_id)))
        assert villages == {"qingbo"}
        text = s.scalars(select(MessageBody.text)).one()
    assert "清波" in text and "刷单返利" in text and amount_band(120000) in text
    # The same file again changes nothing; a new small case within the period adds no alert.
    again = import_cases(core, path)
    assert (again.inserted, again.unchanged, again.alerts) == (0, 2, [])
    clock.set(dt.datetime(2022, 10, 14, 9, 0, tzinfo=TZ))
    more = import_cases(
        core,
        _write(tmp_path, "more.csv", ["A005,2022-10-14T08:00,200000,杀猪盘,网上,huanghu,qingbo"]),
    )
    assert more.alerts == []


def test_three_cases_this_year_trigger_an_alert(core: Core, tmp_path: Path) -> None:
    core.clock = ManualClock(dt.datetime(2022, 10, 12, 10, 0, tzinfo=TZ))
    add_recipients(core.engine, core.district, 100)
    first = import_cases(
        core,
        _write(
            tmp_path,
            "a.csv",
            [
                "B1,2022-02-01T10:00,3000,贷款诈骗,,huanghu,cibi",
                "B2,2022-06-01T10:00,3000,贷款诈骗,,huanghu,cibi",
            ],
        ),
    )
    assert first.alerts == []
    third = import_cases(
        core, _write(tmp_path, "b.csv", ["B3,2022-10-11T10:00,800,冒充客服,,huanghu,cibi"])
    )
    assert [(a["village"], a["rule"]) for a in third.alerts] == [("cibi", "case_count")]
    # Inside sending hours the alert is due now.
    assert third.alerts[0]["at"].startswith("2022-10-12T02:00:00")
