"""One set of numbers everywhere (issue 11): when a message counts, the straddling week, half-up
rounding, the report period, 三必讲 across a year end, and the people measures."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from scheduler import quotas as q
from scheduler.cases import import_cases, parse_amount, record_cases
from scheduler.core import Core
from scheduler.delivery_stats import delivery_stats
from scheduler.dispatcher import Dispatcher
from scheduler.models import MessageState
from scheduler.numbers import half_up, half_up_int
from scheduler.providers import make_provider
from scheduler.reports import (
    QUOTA_HEADER,
    build_monthly_report,
    quota_rows,
    report_month,
    weekly_target,
    write_due_report,
)
from scheduler.settings import Settings
from scheduler.simulation import ManualClock
from tests.factories import add_recipients
from tests.integration.test_quotas import History

TZ = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parents[2]


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=TZ)  # type: ignore[misc]


def pingan(db_url: str, *args: str, config_dir: Path | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATABASE_URL=db_url, PINGAN_LOG_FORMAT="json")
    if config_dir is not None:
        env["PINGAN_CONFIG_DIR"] = str(config_dir)
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- when a message counts -------------------------------------------------------------------


def _dispatch(core: Core, clock: ManualClock) -> None:
    d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
    d.run(until_empty=True)
    d.close()


def test_held_over_send_counts_in_the_month_it_was_sent_everywhere(core: Core, db_url: str) -> None:
    """Queued 23:30 on 31 October, held by the sending hours, sent 1 November: November's in
    delivery stats, the form, the carrier sheet and quota status; pending until sent."""
    clock = ManualClock(local(2022, 10, 31, 23, 30))
    core.clock = clock
    add_recipients(core.engine, core.district, 30)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), clock())
    _dispatch(core, clock)  # outside 08:00-20:00: nothing goes out

    october = delivery_stats(core, month="2022-10", by=None)
    (row,) = october["rows"]
    assert (row["total"], row["pending"], row["queued"]) == (0, 30, 30)

    clock.set(local(2022, 11, 1, 9, 0))
    _dispatch(core, clock)
    assert delivery_stats(core, month="2022-10", by=None)["rows"] == []
    (nov,) = delivery_stats(core, month="2022-11", by=None)["rows"]
    assert (nov["total"], nov["pending"]) == (30, 0)
    by_carrier = delivery_stats(core, month="2022-11", by="carrier")["rows"]
    assert sum(r["total"] for r in by_carrier) == 30

    oct_report = build_monthly_report(core, "2022-10")
    nov_report = build_monthly_report(core, "2022-11")
    assert oct_report.total_form is not None and nov_report.total_form is not None
    assert oct_report.total_form.counts["sms"] == 0
    assert nov_report.total_form.counts["sms"] == 30
    assert sum(r["total"] for r in oct_report.delivery["rows"]) == 0
    assert sum(r["total"] for r in nov_report.delivery["rows"]) == 30

    rules = q.load_rules(core.settings.config_dir, core.district)
    rule = q.find_rule(rules, "town-monthly-novdec")
    (st,) = q.status(
        core.engine,
        q.select_windows([rule], label="2022-11"),
        core.district,
        now=clock(),
        tz=TZ,
    )
    assert sum(r.actual for r in st.rows) == 30
    # The CLI, in its own process, says the same.
    cli = pingan(db_url, "delivery", "stats", "--month", "2022-11", "--format", "json")
    assert cli["rows"][0]["total"] == 30
    status = pingan(
        db_url,
        "quota",
        "status",
        "--rule",
        "town-monthly-novdec",
        "--month",
        "2022-11",
        "-f",
        "json",
    )
    assert sum(r["actual"] for r in status[0]["rows"]) == 30


def _config_with(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    (config / "quotas.yaml").write_text(
        yaml.safe_dump({"rules": rules}, allow_unicode=True), encoding="utf-8"
    )
    return config


def test_straddling_week_has_the_same_status_in_the_report_and_quota_status(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    config = _config_with(
        tmp_path,
        [
            {
                "id": "town-weekly",
                "name": "乡镇每周",
                "subject": "town",
                "window": "week",
                "start": "2022-10-01",
                "end": "2022-10-31",
                "measure": "messages_sent",
                "base": "population",
                "share": "1%",
            }
        ],
    )
    core = Core(settings.model_copy(update={"config_dir": config}))
    town = core.district.find_town("huanghu")
    target = q.target_of(town.population, Decimal("0.01"))
    sent = target // 2  # on pace on Monday 31 October, short of the week's target
    assert target / 7 <= sent < target
    history = History(core.engine)
    for i in range(sent):
        history.send(local(2022, 10, 31, 10, 0, i % 60), "huanghu")

    def w44_row(report_clock: dt.datetime) -> tuple[list[Any], q.AttainmentRow]:
        core.clock = lambda: report_clock
        report = build_monthly_report(core, "2022-10")
        (st,) = [s for s in report.quotas if s.window.label == "2022-W44"]
        row = next(r for r in st.rows if r.subject.key == "huanghu")
        table = next(
            r for r in quota_rows(report) if r[1].startswith("2022-W44") and r[6] == town.name
        )
        return table, row

    # During the week: 进行中, judged exactly as quota status judges it at that moment.
    during = local(2022, 11, 1, 10, 0)
    table, row = w44_row(during)
    (st,) = q.status(
        core.engine,
        q.select_windows(q.load_rules(config, core.district), label="2022-W44"),
        core.district,
        now=during,
        tz=TZ,
    )
    same = next(r for r in st.rows if r.subject.key == "huanghu")
    assert st.open and table[QUOTA_HEADER.index("周期状态")] == "进行中"
    assert "跨月" in table[1]
    assert (row.actual, row.target, row.status, row.rank) == (
        same.actual,
        same.target,
        same.status,
        same.rank,
    )
    # After the week: behind (the month-end judgement said 进度正常), as the CLI says.
    table, row = w44_row(local(2022, 11, 7, 10, 0))
    assert (row.actual, row.status) == (sent, q.Status.BEHIND)
    assert table[QUOTA_HEADER.index("状态")] == "滞后"
    assert table[QUOTA_HEADER.index("周期状态")] == "已结束"
    cli = pingan(db_url, "quota", "status", "--week", "2022-W44", "-f", "json", config_dir=config)
    cli_row = next(r for r in cli[0]["rows"] if r["subject"]["key"] == "huanghu")
    assert (cli_row["actual"], cli_row["target"], cli_row["status"], cli_row["rank"]) == (
        row.actual,
        row.target,
        str(row.status),
        row.rank,
    )
    core.close()


# -- rounding --------------------------------------------------------------------------------


def test_half_up_and_weekly_targets_by_the_real_days_of_the_month() -> None:
    assert half_up_int(Decimal("248.5")) == 249
    assert half_up_int("0.5") == 1 and half_up_int("2.5") == 3
    assert half_up("99999.495", 2) == Decimal("99999.50")
    with pytest.raises(TypeError):
        half_up(248.5)  # type: ignore[arg-type]
    assert q.weekly_share_of_month(1065, dt.date(2022, 11, 1)) == 249  # 1065 × 7 / 30 = 248.5
    assert q.weekly_share_of_month(1065, dt.date(2022, 12, 1)) == 240  # × 7 / 31 = 240.48


def test_report_weekly_target_spreads_the_month_rule(core: Core) -> None:
    rules = q.load_rules(core.settings.config_dir, core.district)
    rule = q.find_rule(rules, "town-monthly-novdec")
    for town in core.district.towns:
        month_target = q.target_of(town.population, rule.final_share)
        expected = half_up_int(Decimal(month_target) * 7 / 30)
        assert weekly_target(rules, town.population, dt.date(2022, 11, 7)) == expected


def test_no_bare_round_on_quota_or_money_values() -> None:
    """round() rounds halves to even; quota and money figures go through scheduler.numbers.
    The uses left round durations for display, or size synthetic sample data."""
    allowed = {
        (
            "scheduler/sample_data.py",
            "round(share * (village.migrant or 0) / village.population) "
            "if village.population else 0",
        ),
        (
            "scheduler/sample_data.py",
            "return sum(round(v.population * coverage) for _t, v in district.villages())",
        ),
        ("scheduler/recipients.py", '"seconds": round(self.seconds, 3),'),
        ("scheduler/cli/simulate.py", '"elapsed_seconds": round(result.elapsed_seconds, 1),'),
    }
    found = set()
    for path in sorted((ROOT / "scheduler").rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"(?<![\w.])round\(", code):
                found.add((path.relative_to(ROOT).as_posix(), line.strip()))
    assert found - allowed == set()


@pytest.mark.parametrize(
    ("text", "yuan"),
    [
        ("100000", "100000.00"),
        ("100,000.00", "100000.00"),
        ("10万", "100000.00"),
        ("10万元", "100000.00"),
        ("1.5万", "15000.00"),
        ("99,999.5", "99999.50"),
        (" 5000元 ", "5000.00"),
    ],
)
def test_amounts_parse_as_decimal_yuan(text: str, yuan: str) -> None:
    assert parse_amount(text) == Decimal(yuan)


@pytest.mark.parametrize("text", ["", "abc", "10万万", "1,00", "ten"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an amount"):
        parse_amount(text)


# -- 三必讲 and the clock ---------------------------------------------------------------------

HEADER = "case_id,time,amount,fraud_type,place,town,village\n"


def test_just_under_100000_raises_no_alert(core: Core, tmp_path: Path) -> None:
    core.clock = lambda: local(2022, 10, 12, 10, 0)
    add_recipients(core.engine, core.district, 50)
    path = tmp_path / "cases.csv"
    path.write_text(
        HEADER
        + 'B1,2022-10-12T09:00,"99,999.5",刷单返利,网上,黄湖镇,清波\n'
        + "B2,2022-10-12T09:00,-5,刷单返利,网上,黄湖镇,清波\n",
        encoding="utf-8",
    )
    result = import_cases(core, path)
    assert result.inserted == 1 and result.alerts == []
    assert result.rejected == [{"line": 3, "reason": "amount is negative"}]


def test_big_case_across_the_year_end_alerts_in_a_rehearsal(db_url: str, tmp_path: Path) -> None:
    """A 150,000-yuan case of 30 December imported on 2 January (a rehearsal, years later)."""
    path = tmp_path / "cases.csv"
    path.write_text(HEADER + "Y1,2022-12-30T15:00,15万元,冒充公检法,网上,黄湖镇,清波\n", "utf-8")
    result = pingan(
        db_url, "cases", "import", str(path), "--clock", "2023-01-02T09:00", "-f", "json"
    )
    assert result["inserted"] == 1
    (alert,) = result["alerts"]
    assert (alert["village"], alert["rule"]) == ("qingbo", "single_loss")
    assert dt.datetime.fromisoformat(alert["at"]) == local(2023, 1, 2, 9, 0)


def test_three_cases_count_across_the_year_end(core: Core) -> None:
    clock = ManualClock(local(2022, 12, 20, 10, 0))
    core.clock = clock
    add_recipients(core.engine, core.district, 50)

    def case(case_id: str, when: dt.datetime) -> dict[str, Any]:
        return {
            "case_id": case_id,
            "occurred_at": when,
            "amount_yuan": Decimal(3000),
            "fraud_type": "刷单返利",
            "place": None,
            "town_id": "huanghu",
            "village_id": "qingbo",
            "imported_at": clock(),
        }

    assert record_cases(core, [case("N1", local(2022, 12, 20, 9))]).alerts == []
    clock.set(local(2022, 12, 28, 10, 0))
    assert record_cases(core, [case("N2", local(2022, 12, 28, 9))]).alerts == []
    clock.set(local(2023, 1, 5, 10, 0))
    (alert,) = record_cases(core, [case("N3", local(2023, 1, 5, 9))]).alerts
    assert alert["rule"] == "case_count"


def test_case_count_period_is_a_setting(settings: Settings) -> None:
    core = Core(
        settings.model_copy(
            update={"alerts": settings.alerts.model_copy(update={"case_count_days": 7})}
        )
    )
    core.clock = lambda: local(2023, 1, 5, 10, 0)
    add_recipients(core.engine, core.district, 20)
    rows = [
        {
            "case_id": f"P{i}",
            "occurred_at": when,
            "amount_yuan": Decimal(3000),
            "fraud_type": "刷单返利",
            "place": None,
            "town_id": "huanghu",
            "village_id": "qingbo",
            "imported_at": core.clock(),
        }
        for i, when in enumerate([local(2022, 12, 20), local(2022, 12, 28), local(2023, 1, 5)])
    ]
    assert record_cases(core, rows).alerts == []  # only two fall in the 7 days to 5 January
    core.close()


# -- the report period -----------------------------------------------------------------------


def test_report_period_picks_the_month() -> None:
    assert report_month(dt.date(2022, 11, 25), "current") == "2022-11"
    assert report_month(dt.date(2022, 11, 3), "previous") == "2022-10"
    assert report_month(dt.date(2023, 1, 3), "previous") == "2022-12"


def test_due_day_3_writes_the_previous_month(settings: Settings) -> None:
    core = Core(settings.model_copy(update={"report_due_day": 3, "report_period": "previous"}))
    assert write_due_report(core, dt.date(2022, 11, 2)) is None
    path = write_due_report(core, dt.date(2022, 11, 3))
    assert path is not None and path.name == "月报-2022-10.xlsx"
    assert write_due_report(core, dt.date(2022, 11, 3)) is None  # once
    core.close()


def test_report_period_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGAN_REPORT_PERIOD", "previous")
    monkeypatch.setenv("PINGAN_REPORT_DUE_DAY", "3")
    s = Settings()
    assert (s.report_period, s.report_due_day) == ("previous", 3)
    monkeypatch.setenv("PINGAN_REPORT_PERIOD", "last")
    with pytest.raises(ValueError, match="report_period"):
        Settings()


# -- people measures -------------------------------------------------------------------------


def test_people_reached_needs_a_message_that_went_out(core: Core) -> None:
    h = History(core.engine)
    at = local(2022, 11, 8, 10, 0)
    h.send(at, "huanghu", "qingbo", recipient=1)  # sent, no report yet
    h.send(at, "huanghu", "qingbo", recipient=2, delivered=True)
    undelivered = h.send(at, "huanghu", "qingbo", recipient=3)
    h.status(undelivered, MessageState.UNDELIVERED)
    failed = h.send(at, "huanghu", "qingbo", recipient=4)
    h.status(failed, MessageState.FAILED)
    rule = q.QuotaRule.model_validate(
        {
            "id": "p",
            "subject": "town",
            "window": "month",
            "start": "2022-11-01",
            "end": "2022-11-30",
            "measure": "people_reached",
            "base": "population",
            "share": "1%",
        }
    )
    (w,) = q.windows(rule)
    now = local(2022, 12, 1)

    def actual(measure: str) -> int:
        r = rule.model_copy(update={"measure": measure})
        rows = q.attainment(core.engine, r, w, core.district, now=now, tz=TZ)
        return next(x.actual for x in rows if x.subject.key == "huanghu")

    assert actual("people_reached") == 2
    assert actual("people_delivered") == 1
    assert actual("messages_sent") == 4
    assert "people_delivered" in q.MEASURES
    with pytest.raises(ValueError, match="unknown measure"):
        rule.model_copy(update={}).model_validate({**rule.model_dump(), "measure": "smiles"})
