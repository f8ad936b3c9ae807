"""The application services on a real database (SQLite and PostgreSQL): what every front end
calls, tested once here rather than through each front end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from scheduler.core import Core
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.periods import InvalidMonth
from scheduler.services import activities, audit, delivery, occurrences, quotas, recipients, reports
from scheduler.services import sends as sends_service
from scheduler.settings import Settings
from tests.acceptance.test_cli_quota import _send, pingan
from tests.integration.test_web_api import _serving

TZ = ZoneInfo("Asia/Shanghai")


class Desk:
    """An actor as the audit log sees one (the API passes its token's Caller)."""

    name = "desk-1"
    peer = "127.0.0.1"


def _at(core: Core, when: dt.datetime) -> None:
    core.clock = lambda: when


def test_quota_status_picks_the_same_window_by_label_day_or_today(core: Core) -> None:
    at = dt.datetime(2022, 10, 12, 10, tzinfo=TZ)
    _send(
        core.engine,
        [(at + dt.timedelta(seconds=i), "caoe", "jiangxi", "mobile") for i in range(7)],
        1,
    )
    _at(core, dt.datetime(2022, 10, 13, 9, tzinfo=TZ))

    by_label = quotas.quota_status(core, "town-weekly-oct", "2022-w41")
    by_day = quotas.quota_status(core, "town-weekly-oct", on=dt.date(2022, 10, 16))
    today = quotas.quota_status(core, "town-weekly-oct")

    assert by_label.label == "2022-W41" and by_label.day is None
    assert by_day.day == dt.date(2022, 10, 16) and today.day == dt.date(2022, 10, 13)
    assert by_label.rules_json() == by_day.rules_json() == today.rules_json()
    (rule,) = by_label.rules_json()
    assert rule["window"]["label"] == "2022-W41"
    caoe = next(r for r in rule["rows"] if r["subject"]["key"] == "caoe")
    assert caoe["actual"] == 7
    assert json.loads(json.dumps(by_label.to_dict(), default=str))["window"] == "2022-W41"


def test_quota_status_by_month_and_grain(core: Core) -> None:
    _at(core, dt.datetime(2022, 11, 20, 9, tzinfo=TZ))
    report = quotas.quota_status(core, None, "2022-10", by="carrier")
    assert {st.rule.id for st in report.statuses} == {"carrier-monthly"}
    assert report.statuses[0].window.label == "2022-10"
    assert report.where == "2022-10"


@pytest.mark.parametrize("bad", ["2022-13", "W41", "2022-W60", "", "10-2022"])
def test_quota_status_refuses_what_is_not_a_window(core: Core, bad: str) -> None:
    with pytest.raises(quotas.InvalidWindow, match="2022-W41"):
        quotas.quota_status(core, None, bad)


def test_quota_status_refuses_an_unknown_rule_and_a_bad_grain(
    core: Core,
) -> None:
    with pytest.raises(UnknownName, match="village-outreach"):
        quotas.quota_status(core, "nope")
    # A label wins over a day (the API takes both; the CLI refuses both as a usage error).
    both = quotas.quota_status(core, None, "2022-10", dt.date(2022, 12, 1))
    assert (both.label, both.day) == ("2022-10", None)
    with pytest.raises(PingAnError, match="town, village, carrier"):
        quotas.quota_status(core, None, "2022-10", by="street")


def test_cli_and_service_give_the_same_status(tmp_path: Path, core: Core, db_url: str) -> None:
    """`pingan quota status --format json` is the service's result, formatted."""
    at = dt.datetime(2022, 10, 12, 10, tzinfo=TZ)
    _send(core.engine, [(at, "songxia", "qiansha", "unicom")], 2)
    out = pingan(tmp_path, "quota", "status", "--week", "2022-W41", "-f", "json", db_url=db_url)
    assert out.returncode == 0, out.stderr
    service = quotas.quota_status(core, None, "2022-W41").rules_json()
    assert json.loads(out.stdout) == json.loads(json.dumps(service, default=str))


def test_opt_out_records_the_valid_cancels_and_audits_masked(core: Core) -> None:
    _at(core, dt.datetime(2022, 10, 12, 10, tzinfo=TZ))
    result = recipients.opt_out(
        core,
        [("line 1", "138 0013 8000"), ("line 2", "+8613800138000"), ("line 3", "12345")],
        source="phone",
        reason="电话投诉",
        actor=Desk(),
    )
    assert result.accepted == ("13800138000", "13800138000")
    assert (result.recorded, result.new, result.cancelled) == (1, 1, 0)
    (bad,) = result.rejected
    assert (bad.where, bad.value) == ("line 3", "12345")
    assert bad.to_dict()["phone"] == "*2345"
    assert "12345" not in json.dumps(result.to_dict(), ensure_ascii=False)

    again = recipients.opt_out(core, [("x", "13800138000")], source="cli")
    assert (again.recorded, again.new) == (1, 0)
    assert recipients.recipient_counts(core).opted_out == 1

    (entry,) = audit.audit_entries(core, action="opt-outs")
    assert (entry.who, entry.peer, entry.at) == ("desk-1", "127.0.0.1", core.clock())
    assert entry.detail["phones"] == ["138****8000"]
    assert "13800138000" not in json.dumps(entry.to_dict(), default=str)


def test_delivery_stats_checks_month_and_grouping(core: Core) -> None:
    stats = delivery.delivery_stats(core, "2022-10", "carrier")
    assert (stats.month, stats.by, stats.rows, stats.top_errors) == ("2022-10", "carrier", (), ())
    assert stats.to_dict()["rows"] == []
    with pytest.raises(InvalidMonth):
        delivery.delivery_stats(core, "2022-1")
    with pytest.raises(PingAnError, match="town, carrier, day, error"):
        delivery.delivery_stats(core, None, "village")
    assert delivery.messages_left(core) == {} or all(
        v == 0 for v in delivery.messages_left(core).values()
    )


def test_reported_sends_are_listed_in_the_month_of_their_last_day(core: Core) -> None:
    _at(core, dt.datetime(2022, 11, 8, 9, tzinfo=TZ))
    rows = [
        {"source": "移动", "subject": "caoe", "period": "2022-W44", "messages_sent": "50"},
        {"source": "caoe", "subject": "caoe", "period": "2022-10-31", "messages_sent": "7"},
    ]
    result = sends_service.record_sends(
        core, [(f"row {i}", r) for i, r in enumerate(rows)], actor=Desk()
    )
    assert (result.inserted, result.rejected) == (2, []), result.rejected
    # 2022-W44 runs 31 Oct to 6 Nov: it counts in November; the 31st in October.
    assert [(r.period, r.messages_sent) for r in sends_service.list_sends(core, "2022-10")] == [
        ("2022-10-31", 7)
    ]
    (nov,) = sends_service.list_sends(core, "2022-11")
    assert (nov.period, nov.source, nov.source_label) == ("2022-W44", "carrier:mobile", "移动")
    assert [e.detail for e in audit.audit_entries(core, action="sends")] == [
        {"inserted": 2, "updated": 0}
    ]


def test_occurrence_pause_of_none_is_unknown(core: Core) -> None:
    with pytest.raises(UnknownName, match="no occurrence 999"):
        occurrences.pause_occurrence(core, 999)
    with pytest.raises(UnknownName):
        occurrences.resume_occurrence(core, 999)
    assert occurrences.list_occurrences(core) == []


def test_report_json_and_activities_of_a_month(core: Core) -> None:
    _at(core, dt.datetime(2022, 11, 3, 9, tzinfo=TZ))
    town = core.district.towns[0]
    activities.save_activities(core, town.name, "2022-10", {"banners": 3, "leaflets": 40})
    listed = activities.list_activities(core, " 2022-10 ")
    assert listed.month == "2022-10" and not listed.filed
    (row,) = listed.rows
    assert (row["town"], row["banners"], row["leaflets"]) == (town.id, 3, 40)

    data = reports.report_json(reports.build_report(core, "2022-10"))
    assert data["month"] == "2022-10"
    assert data["form"]["total"][0] == "合计"
    banners = data["form"]["header"].index(next(h for h in data["form"]["header"] if "横幅" in h))
    assert data["form"]["total"][banners] == 3
    with pytest.raises(InvalidMonth):
        reports.build_report(core, "2022-13")


def test_api_quota_is_the_service_and_keeps_its_answers(settings: Settings) -> None:
    """GET /api/quota (real uvicorn) returns the service's rows; a week the calendar lacks
    (2022-W53 matches the route's pattern) and an unknown rule answer no rows, as before."""
    with _serving(settings) as (served, base):
        _send(
            served.engine,
            [(dt.datetime(2022, 10, 12, 10, tzinfo=TZ), "caoe", "jiangxi", "mobile")],
            3,
        )
        got = httpx.get(base + "/api/quota", params={"week": "2022-W41"}, timeout=30)
        assert got.status_code == 200, got.text
        expected = quotas.quota_status(served, None, "2022-W41").rules_json()

        # Compared through the figures: the route's response model reshapes some values.
        def figures(rules: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            return [
                (st["rule"], st["window"]["label"], r["subject"]["key"], r["actual"], r["target"])
                for st in rules
                for r in st["rows"]
            ]

        assert figures(got.json()) == figures(json.loads(json.dumps(expected, default=str)))
        assert ("town-weekly-oct", "2022-W41", "caoe", 1, 2300) in figures(got.json())
        for params in ({"week": "2022-W53"}, {"rule": "nope", "month": "2022-10"}):
            r = httpx.get(base + "/api/quota", params=params, timeout=30)
            assert (r.status_code, r.json()) == (200, [])
        both = httpx.get(base + "/api/quota", params={"month": "2022-10", "on": "2022-12-01"})
        assert {w["window"]["label"] for w in both.json()} == {"2022-10"}
