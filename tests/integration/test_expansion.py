"""Expansion into the outbox, on SQLite and PostgreSQL: eligibility, exclusions, exactly once."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageBody, Occurrence, OccurrenceState, OptOut
from scheduler.planner import Firing
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


def _count(core: Core, occurrence_id: int) -> int:
    with Session(core.engine) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.occurrence_id == occurrence_id)
            )
            or 0
        )


def test_weekly_expands_everyone_once_and_renders_once_per_context(core: Core) -> None:
    add_recipients(core.engine, core.district, 300)
    with Session(core.engine) as s, s.begin():
        s.add(OptOut(phone="13800000000", source="test", reason=None, created_at=MONDAY))
    planner = core.planner(chunk_size=64)
    weekly = core.campaigns.get("weekly-antifraud")
    first = planner.fire_scheduled(weekly, MONDAY)
    assert first.state == OccurrenceState.READY
    assert first.queued == 299
    assert first.excluded == {"opted_out": 1}
    again = planner.fire_scheduled(weekly, MONDAY)
    assert again.occurrence_id == first.occurrence_id
    assert _count(core, first.occurrence_id) == 299
    with Session(core.engine) as s:
        bodies = s.scalars(select(MessageBody)).all()
        # The slogan uses no per-recipient variable: one body per distinct context at most.
        assert 1 <= len(bodies) <= len(core.district.towns) * 7
        assert all(b.text.startswith(core.district.district.signature) for b in bodies)
        assert all(len(b.template_hash) == 64 for b in bodies)


def test_weekly_cap_excludes_third_sms_in_a_week(core: Core) -> None:
    add_recipients(core.engine, core.district, 50)
    planner = core.planner()
    c = core.campaigns
    planner.fire_scheduled(c.get("weekly-antifraud"), MONDAY)
    planner.fire(Firing(c.get("survey-notice"), MONDAY + dt.timedelta(hours=1), "survey-notice"))
    third = planner.fire(
        Firing(c.get("survey-notice"), MONDAY + dt.timedelta(days=2), "survey-notice", "manual")
    )
    assert third.queued == 0
    assert third.excluded == {"over_cap": 50}
    # The next week starts a new count.
    next_week = planner.fire_scheduled(c.get("weekly-antifraud"), MONDAY + dt.timedelta(days=7))
    assert next_week.queued == 50


def test_targeted_push_picks_template_by_segment(core: Core) -> None:
    add_recipients(core.engine, core.district, 120)
    result = core.planner().fire_scheduled(
        core.campaigns.get("targeted-push"), dt.datetime(2022, 10, 12, 10, 0, tzinfo=TZ)
    )
    with Session(core.engine) as s:
        names = set(
            s.scalars(
                select(MessageBody.template_name)
                .join(Message, Message.body_id == MessageBody.id)
                .where(Message.occurrence_id == result.occurrence_id)
            )
        )
    assert names <= set(core.campaigns.get("targeted-push").template_names())
    assert "targeted-student" in names and "targeted-elderly" in names
    assert result.excluded.get("outside_audience", 0) > 0
    assert result.queued + sum(result.excluded.values()) == 120


def test_letter_occurrence_renders_one_letter_per_town(core: Core) -> None:
    result = core.planner().fire_scheduled(
        core.campaigns.get("open-letter"), dt.datetime(2022, 10, 8, 9, 0, tzinfo=TZ)
    )
    assert result.state == OccurrenceState.DONE
    assert result.queued == len(core.district.towns)
    folder = core.settings.data_dir / "letters" / "open-letter-2022-10-08"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{t.id}.html" for t in core.district.towns)
    assert "黄湖镇" in (folder / "huanghu.html").read_text(encoding="utf-8")


def test_unapproved_template_is_refused_with_its_name(core: Core, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(core.settings.templates_dir, templates)
    survey = next(templates.glob("survey-notice.*"))
    survey.write_text(survey.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    core.settings.templates_dir = templates
    core.reload()
    add_recipients(core.engine, core.district, 10)
    result = core.planner().fire(
        Firing(core.campaigns.get("survey-notice"), MONDAY, "survey-notice")
    )
    assert result.state == OccurrenceState.FAILED
    assert result.error is not None and "survey-notice" in result.error
    with Session(core.engine) as s:
        occ = s.scalars(select(Occurrence)).one()
        assert occ.state == OccurrenceState.FAILED
    assert _count(core, result.occurrence_id) == 0
