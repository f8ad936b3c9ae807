"""Reported sends: carriers' and towns' own sends, imported, validated and counted by quotas."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr

from scheduler import quotas as q
from scheduler.core import Core
from scheduler.reports import QUOTA_HEADER, build_monthly_report, quota_rows
from scheduler.sends import import_sends
from scheduler.web import HttpServer, create_app
from tests.integration.test_quotas import History

TZ = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parents[2]
HEADER = "source,subject,village,period,messages_sent,people_reached,note\n"


def pingan(db_url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATABASE_URL=db_url, PINGAN_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def _csv(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_import_validates_each_row_and_reimport_updates(db_url: str, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "sends.csv",
        [
            "中国移动,移动,,2022-W41,18000,,每周免费平安短信",
            "黄湖镇,黄湖镇,清波,2022-10-12,300,280,村广播短信",
            "中国铁通,移动,,2022-W41,5,,",  # unknown source
            "黄湖镇,黄湖镇,,2022-10-12,-4,,",  # negative
            "黄湖镇,黄湖镇,清波,2022-10-12,310,,",  # same source, subject and day again
            "黄湖镇,中国联通,,2022-W41,1,,",  # a town cannot report a carrier's sends
            "中国移动,移动,,2022-W99,1,,",  # no such week
        ],
    )
    done = pingan(db_url, "sends", "import", str(path), "--format", "json", ok=False)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert (result["read"], result["inserted"], result["updated"]) == (7, 2, 0)
    reasons = {r["line"]: r["reason"] for r in result["rejected"]}
    assert sorted(reasons) == ["4", "5", "6", "7", "8"]
    assert "unknown source" in reasons["4"]
    assert "negative" in reasons["5"]
    assert "duplicate of 3" in reasons["6"]
    assert "only 中国联通" in reasons["7"]
    assert "week" in reasons["8"]
    text = pingan(db_url, "sends", "import", str(path), ok=False)
    assert f"{path}, line 5: messages_sent -4 is negative" in text.stdout

    again = _csv(tmp_path, "again.csv", ["中国移动,移动,,2022-W41,18500,,更正"])
    result = json.loads(pingan(db_url, "sends", "import", str(again), "-f", "json").stdout)
    assert (result["inserted"], result["updated"], result["rejected"]) == (0, 1, [])
    listed = json.loads(pingan(db_url, "sends", "list", "--month", "2022-10", "-f", "json").stdout)
    mobile = next(r for r in listed if r["source"] == "carrier:mobile")
    assert (mobile["messages_sent"], mobile["note"]) == (18500, "更正")


def test_reported_carrier_sends_meet_a_quota_own_sends_miss(
    core: Core, db_url: str, tmp_path: Path
) -> None:
    history = History(core.engine)
    for i in range(40):  # the office's own sends to mobile numbers: far below 18,000
        history.send(dt.datetime(2022, 10, 11, 10, 0, i, tzinfo=TZ), "huanghu", carrier="mobile")
    rules = q.load_rules(core.settings.config_dir, core.district)
    weekly = q.find_rule(rules, "carrier-weekly")
    assert weekly.counted_sources == "reported"
    now = dt.datetime(2022, 10, 20, tzinfo=TZ)
    pairs = q.select_windows([weekly], label="2022-W41")

    def mobile(rule: q.QuotaRule) -> q.AttainmentRow:
        (st,) = q.status(core.engine, [(rule, pairs[0][1])], core.district, now=now, tz=TZ)
        return next(r for r in st.rows if r.subject.key == "mobile")

    own_only = weekly.model_copy(update={"sources": "own"})
    assert (mobile(own_only).actual, mobile(own_only).status) == (40, q.Status.BEHIND)

    path = _csv(tmp_path, "carriers.csv", ["移动,中国移动,,2022-W41,18000,,"])
    assert import_sends(core, path).inserted == 1
    row = mobile(weekly)
    assert (row.own, row.reported, row.actual, row.status) == (40, 18000, 18000, q.Status.MET)
    both = mobile(weekly.model_copy(update={"sources": "both"}))
    assert both.actual == 18040

    # quota status shows own and reported apart, and their sum as counted.
    out = pingan(
        db_url, "quota", "status", "--rule", "carrier-weekly", "--week", "2022-W41", "-f", "json"
    )
    cli = next(r for r in json.loads(out.stdout)[0]["rows"] if r["subject"]["key"] == "mobile")
    assert (cli["own"], cli["reported"], cli["actual"], cli["status"]) == (40, 18000, 18000, "met")
    # So does the report's ranking.
    core.clock = lambda: now
    report = build_monthly_report(core, "2022-10")
    table = next(
        r
        for r in quota_rows(report)
        if r[1] == "2022-W41" and r[6] == "移动" and r[0].startswith("运营商10-12月每周")
    )
    cols = {h: table[i] for i, h in enumerate(QUOTA_HEADER)}
    assert (cols["本系统发送"], cols["报送"], cols["计入合计"], cols["计入"]) == (
        40,
        18000,
        18000,
        "报送",
    )


def test_town_reports_add_to_the_form_beside_own_sends(core: Core, tmp_path: Path) -> None:
    history = History(core.engine)
    for i in range(5):
        history.send(dt.datetime(2022, 10, 11, 10, i, tzinfo=TZ), "huanghu")
    path = _csv(
        tmp_path,
        "town.csv",
        [
            "黄湖镇,黄湖镇,清波,2022-10-12,300,,",
            "黄湖镇,黄湖镇,,2022-W44,70,,",  # ends 6 November: November's
        ],
    )
    assert import_sends(core, path).inserted == 2
    core.clock = lambda: dt.datetime(2022, 11, 10, tzinfo=TZ)
    october = next(f for f in build_monthly_report(core, "2022-10").forms if f.unit == "黄湖镇")
    assert (october.sms_own, october.sms_reported, october.counts["sms"]) == (5, 300, 305)
    november = next(f for f in build_monthly_report(core, "2022-11").forms if f.unit == "黄湖镇")
    assert (november.sms_own, november.sms_reported) == (0, 70)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(core: Core) -> Iterator[str]:
    port = _free_port()
    core.settings = core.settings.model_copy(update={"api_token": SecretStr("secret")})
    server = HttpServer(create_app(core), "127.0.0.1", port)
    server.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.post(base + "/api/sends", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield base
    server.stop()


def test_post_api_sends(core: Core, api: str) -> None:
    auth = {"Authorization": "Bearer secret"}
    body: list[dict[str, Any]] = [
        {"source": "电信", "subject": "电信", "period": "2022-W41", "messages_sent": 8800},
        {"source": "电信", "subject": "黄湖镇", "period": "2022-10-12", "messages_sent": "x"},
    ]
    assert httpx.post(api + "/api/sends", json=body).status_code == 401
    r = httpx.post(api + "/api/sends", json=body, headers=auth)
    assert r.status_code == 422
    data = r.json()
    assert (data["inserted"], data["rejected"]) == (
        1,
        [{"line": "row 1", "reason": "messages_sent 'x' is not a whole number"}],
    )
    ok = httpx.post(api + "/api/sends", json=body[0] | {"messages_sent": 9000}, headers=auth)
    assert ok.status_code == 200 and ok.json()["updated"] == 1
    sums = q.sends_store.sum_reported(
        core.engine,
        first_day=dt.date(2022, 10, 1),
        last_day=dt.date(2022, 10, 31),
        by="carrier",
        column="messages_sent",
    )
    assert sums == {("telecom",): 9000}
