"""One bad campaign or template fails alone, and a failed occurrence can be retried once fixed.

On SQLite and PostgreSQL: an unknown template, a template that fails on real data (for one
recipient, for everyone, or part-way through), an unexpected error, a campaign removed from
the file, an event SMS over the segment limit, a case's free-text fraud type.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from scheduler.cases import import_cases
from scheduler.config import load_district
from scheduler.core import Core
from scheduler.exceptions import ConfigError, PingAnError, UnknownName
from scheduler.models import FraudCase, Message, MessageBody, Occurrence, OccurrenceState
from scheduler.planner import Firing
from scheduler.simulation import ManualClock
from scheduler.store import outbox
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(core: Core, tmp_path: Path) -> Core:
    """The core on its own copy of the configuration and templates, to edit."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "templates" / "messages", tmp_path / "messages")
    core.settings.config_dir = tmp_path / "config"
    core.settings.templates_dir = tmp_path / "messages"
    core.reload()
    return core


def _add_campaign(core: Core, yaml_text: str) -> None:
    path = core.settings.config_dir / "campaigns.yaml"
    path.write_text(path.read_text(encoding="utf-8") + yaml_text, encoding="utf-8")
    core.reload()


def _template(core: Core, name: str, body: str, *, approve: bool = True) -> None:
    path = core.settings.templates_dir / f"{name}.sms.j2"
    path.write_text(f"---\nchannel: sms\ntheme: 测试\n---\n{body}\n", encoding="utf-8")
    if approve:
        core.catalogue.approve(name, "测试审核")


def _campaign(name: str, template: str, cron: str = "0 9 * * mon") -> str:
    return f"""
  - name: {name}
    channel: sms
    template: {template}
    schedule: {{cron: "{cron}"}}
    active: {{start: 2022-10-01, end: 2022-12-31}}
"""


def _messages(core: Core, occurrence_id: int) -> tuple[int, int]:
    """(messages, distinct recipients) of an occurrence."""
    with Session(core.engine) as s:
        row = s.execute(
            select(func.count(), func.count(func.distinct(Message.recipient_id))).where(
                Message.occurrence_id == occurrence_id
            )
        ).one()
    return int(row[0]), int(row[1])


def test_a_typo_in_a_template_name_fails_that_campaign_only(ws: Core) -> None:
    _add_campaign(ws, _campaign("monday-notice", "survey-notise"))  # typo
    # The file loads: the other campaigns are there.
    assert {"weekly-antifraud", "monday-notice"} <= set(ws.campaigns.by_name)
    add_recipients(ws.engine, ws.district, 60)
    with capture_logs() as logs:
        results = ws.planner().catch_up(MONDAY + dt.timedelta(minutes=30))
    by_campaign = {r.campaign: r for r in results}
    assert by_campaign["weekly-antifraud"].state == OccurrenceState.READY
    assert by_campaign["weekly-antifraud"].queued == 60
    bad = by_campaign["monday-notice"]
    assert bad.state == OccurrenceState.FAILED
    assert bad.error is not None and "survey-notise" in bad.error
    failed_logs = [e for e in logs if e["event"] == "occurrence.failed"]
    assert [(e["occurrence_id"], e["campaign"]) for e in failed_logs] == [
        (bad.occurrence_id, "monday-notice")
    ]
    with Session(ws.engine) as s:
        occ = s.get(Occurrence, bad.occurrence_id)
        assert occ is not None and occ.state == OccurrenceState.FAILED and occ.error == bad.error
    # A later start does not trip over it again: it is reported as failed, nothing raises.
    again = ws.planner().catch_up(MONDAY + dt.timedelta(hours=1))
    assert [r.state for r in again if r.campaign == "monday-notice"] == [OccurrenceState.FAILED]


def test_a_render_error_for_one_recipient_excludes_only_that_recipient(ws: Core) -> None:
    _template(
        ws, "greeting", "{% if name == '测试7' %}{{ 1 // 0 }}{% endif %}{{ name }}您好，谨防诈骗。"
    )
    _add_campaign(ws, _campaign("greeting", "greeting"))
    add_recipients(ws.engine, ws.district, 100)
    result = ws.planner(chunk_size=30).fire_scheduled(ws.campaigns.get("greeting"), MONDAY)
    assert result.state == OccurrenceState.READY
    assert result.queued == 99
    assert result.excluded == {"render_error": 1}
    assert _messages(ws, result.occurrence_id) == (99, 99)


def test_a_template_that_fails_for_everyone_fails_the_occurrence(ws: Core) -> None:
    # Lint renders it for 张三 (the sample) and passes; real names all fail.
    _template(ws, "broken", "{% if name != '张三' %}{{ 1 // 0 }}{% endif %}{{ name }}您好。")
    _add_campaign(ws, _campaign("broken", "broken"))
    add_recipients(ws.engine, ws.district, 100)
    result = ws.planner(chunk_size=500).fire_scheduled(ws.campaigns.get("broken"), MONDAY)
    assert result.state == OccurrenceState.FAILED
    assert result.error is not None
    assert "broken" in result.error and "ZeroDivisionError" in result.error
    assert _messages(ws, result.occurrence_id) == (0, 0)
    # A handful of recipients is enough to tell: nothing rendered, the template is broken.
    few = ws.planner().fire(Firing(ws.campaigns.get("broken"), MONDAY, "broken:few", "manual"))
    assert few.state == OccurrenceState.FAILED


def test_a_failure_part_way_keeps_what_was_queued_and_retry_resumes_once(ws: Core) -> None:
    # Names 测试0..测试299: the template fails from 测试100 on (five characters), after
    # two chunks of 50 rendered well.
    _template(ws, "partway", "{% if name|length > 4 %}{{ 1 // 0 }}{% endif %}{{ name }}您好。")
    _add_campaign(ws, _campaign("partway", "partway"))
    add_recipients(ws.engine, ws.district, 300)
    planner = ws.planner(chunk_size=50)
    first = planner.fire_scheduled(ws.campaigns.get("partway"), MONDAY)
    assert first.state == OccurrenceState.FAILED
    assert first.error is not None and "failed 101 of 201 renders" in first.error
    assert first.queued == 100
    assert first.excluded == {"render_error": 100}
    assert _messages(ws, first.occurrence_id) == (100, 100)
    # Retrying before the fix fails the same way and queues nothing new.
    again = planner.retry(first.occurrence_id)
    assert again.state == OccurrenceState.FAILED
    assert _messages(ws, first.occurrence_id) == (100, 100)

    _template(ws, "partway", "{{ name }}您好。")
    with pytest.raises(PingAnError, match="not failed"):
        planner.retry(_ready_occurrence(ws))
    fixed = planner.retry(first.occurrence_id)
    assert fixed.state == OccurrenceState.READY
    assert fixed.queued == 200
    assert fixed.excluded == {"render_error": 100}
    assert _messages(ws, first.occurrence_id) == (200, 200)
    with Session(ws.engine) as s:
        occ = s.get(Occurrence, first.occurrence_id)
        assert occ is not None
        assert occ.scheduled_at == MONDAY and occ.error is None
    with pytest.raises(PingAnError, match="not failed"):
        planner.retry(first.occurrence_id)
    with pytest.raises(UnknownName):
        planner.retry(10_000)


def _ready_occurrence(core: Core) -> int:
    result = core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    assert result.state == OccurrenceState.READY
    return result.occurrence_id


def test_retry_after_reapproval_sends_a_refused_monday_sms(ws: Core) -> None:
    add_recipients(ws.engine, ws.district, 40)
    path = ws.settings.templates_dir / "survey-notice.sms.j2"
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    planner = ws.planner()
    refused = planner.fire(Firing(ws.campaigns.get("survey-notice"), MONDAY, "survey-notice"))
    assert refused.state == OccurrenceState.FAILED
    assert refused.error is not None and "changed since its approval" in refused.error
    ws.catalogue.approve("survey-notice", "王科长")
    done = planner.retry(refused.occurrence_id)
    assert (done.state, done.queued, done.error) == (OccurrenceState.READY, 40, None)
    assert _messages(ws, refused.occurrence_id) == (40, 40)


def test_an_unexpected_error_fails_the_occurrence_not_the_caller(ws: Core, tmp_path: Path) -> None:
    # The letters folder cannot be created: an OSError, not one of ours, whose message quotes
    # a path that looks like a phone number (it must not reach the log or the database).
    ws.settings.data_dir = tmp_path / "13812345678"
    ws.settings.data_dir.mkdir(parents=True)
    (ws.settings.data_dir / "letters").write_text("not a folder", encoding="utf-8")
    letter = ws.campaigns.get("open-letter")
    with capture_logs() as logs:
        result = ws.planner().fire_scheduled(letter, dt.datetime(2022, 10, 8, 9, 0, tzinfo=TZ))
    assert result.state == OccurrenceState.FAILED
    assert result.error is not None and result.error.startswith(("FileExistsError", "NotADir"))
    assert "138****5678" in result.error and "13812345678" not in result.error
    (failed,) = [e for e in logs if e["event"] == "occurrence.failed"]
    assert "Traceback" in failed["traceback"] and "13812345678" not in failed["traceback"]
    (ws.settings.data_dir / "letters").unlink()
    assert ws.planner().retry(result.occurrence_id).state == OccurrenceState.DONE


def test_an_occurrence_of_a_removed_campaign_is_failed_at_start(ws: Core) -> None:
    occ, _ = outbox.get_or_create_occurrence(
        ws.engine,
        campaign="old-campaign",
        scheduled_at=MONDAY,
        kind="scheduled",
        channel="sms",
        priority=0,
        now=MONDAY,
    )
    results = ws.planner().catch_up(MONDAY + dt.timedelta(minutes=5))
    failed = [r for r in results if r.occurrence_id == occ.id]
    assert [r.state for r in failed] == [OccurrenceState.FAILED]
    assert failed[0].error is not None and "old-campaign" in failed[0].error


def _alert_case(core: Core, tmp_path: Path, fraud_type: str) -> Path:
    path = tmp_path / "cases.csv"
    path.write_text(
        "case_id,time,amount,fraud_type,place,town,village\n"
        f'C1,2022-10-12T09:00,150000,"{fraud_type}",网上,huanghu,qingbo\n',
        encoding="utf-8",
    )
    return path


def test_a_free_text_fraud_type_reaches_the_sms_only_as_the_generic_phrase(
    ws: Core, tmp_path: Path
) -> None:
    ws.clock = ManualClock(dt.datetime(2022, 10, 12, 10, 0, tzinfo=TZ))
    add_recipients(ws.engine, ws.district, 200)
    raw = "点击 http://t.cn/x 领取退款，加微信ab123"
    result = import_cases(ws, _alert_case(ws, tmp_path, raw))
    assert len(result.alerts) == 1 and result.alerts[0]["queued"] > 0
    with Session(ws.engine) as s:
        texts = s.scalars(select(MessageBody.text)).all()
        stored = s.scalars(select(FraudCase.fraud_type)).one()
    assert stored == raw  # stored and shown as recorded
    assert len(texts) == 1
    assert "电信网络诈骗" in texts[0] and "http" not in texts[0] and "微信" not in texts[0]
    assert "10月12日" in texts[0] and "清波" in texts[0]


def test_a_listed_fraud_type_is_named_even_written_full_width(ws: Core, tmp_path: Path) -> None:
    ws.clock = ManualClock(dt.datetime(2022, 10, 12, 10, 0, tzinfo=TZ))
    add_recipients(ws.engine, ws.district, 100)
    import_cases(ws, _alert_case(ws, tmp_path, " 冒充熟人／领导 "))
    with Session(ws.engine) as s:
        text = s.scalars(select(MessageBody.text)).one()
    assert "（冒充熟人/领导）" in text


def test_an_event_sms_over_the_segment_limit_fails_instead_of_sending_long(
    ws: Core, tmp_path: Path
) -> None:
    ws.settings.max_sms_segments = 1  # the alert text takes two
    ws.reload()
    ws.clock = ManualClock(dt.datetime(2022, 10, 12, 10, 0, tzinfo=TZ))
    add_recipients(ws.engine, ws.district, 100)
    result = import_cases(ws, _alert_case(ws, tmp_path, "刷单返利"))
    (alert,) = result.alerts
    with Session(ws.engine) as s:
        occ = s.get(Occurrence, alert["occurrence_id"])
        assert occ is not None
        assert occ.state == OccurrenceState.FAILED
        assert occ.error is not None and "PINGAN_MAX_SMS_SEGMENTS=1" in occ.error
        assert s.scalar(select(func.count()).select_from(Message)) == 0


def test_the_fraud_types_list_is_validated(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    path = tmp_path / "config" / "district.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("    - 刷单返利\n", "    - 点击 http://t.cn 领奖\n"), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_district(tmp_path / "config")
    assert any("fraud_types.known: " in p and "点击" in p for p in caught.value.problems)
    path.write_text(text.replace("    - 虚假征信\n", "    - 刷单返利\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate fraud types: 刷单返利"):
        load_district(tmp_path / "config")
