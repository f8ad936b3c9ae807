"""Campaign definitions: validation with file and field, and fire times from the triggers."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from scheduler.campaigns import load_campaigns, week_index
from scheduler.config import load_district
from scheduler.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    shutil.copytree(ROOT / "config", d)
    return d


def test_sample_campaigns_load() -> None:
    district = load_district(ROOT / "config")
    campaigns = load_campaigns(ROOT / "config", district)
    assert {"weekly-antifraud", "survey-notice", "targeted-push", "open-letter"} <= set(
        campaigns.by_name
    )
    assert campaigns.for_event("fraud-case") is not None


def test_weekly_fire_times_stay_in_window() -> None:
    district = load_district(ROOT / "config")
    weekly = load_campaigns(ROOT / "config", district).get("weekly-antifraud")
    start = dt.datetime(2022, 9, 1, tzinfo=TZ)
    end = dt.datetime(2023, 2, 1, tzinfo=TZ)
    times = list(weekly.fire_times(TZ, start, end))
    assert times[0] == dt.datetime(2022, 10, 3, 9, 0, tzinfo=TZ)
    assert times[-1] == dt.datetime(2022, 12, 26, 9, 0, tzinfo=TZ)
    assert len(times) == 13
    assert all(t.weekday() == 0 and t.hour == 9 for t in times)


def test_one_off_outside_window_never_fires(config_dir: Path) -> None:
    path = config_dir / "campaigns.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "schedule: {at: 2022-10-31T10:00:00}", "schedule: {at: 2022-11-02T10:00:00}"
        ),
        encoding="utf-8",
    )
    district = load_district(config_dir)
    survey = load_campaigns(config_dir, district).get("survey-notice")
    assert survey.trigger(TZ) is None
    assert (
        list(
            survey.fire_times(
                TZ, dt.datetime(2022, 1, 1, tzinfo=TZ), dt.datetime(2023, 1, 1, tzinfo=TZ)
            )
        )
        == []
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('cron: "0 9 * * mon"', 'cron: "0 9 * * 1"', "weekdays as mon..sun"),
        ('cron: "0 9 * * mon"', 'cron: "0 9 * mon"', "cron needs 5 fields"),
        (
            "pool: weekly-slogans",
            "pool: weekly-slogans\n    template: survey-notice",
            "exactly one of template, pool",
        ),
        ("audience: all", "audience: {towns: [nowhere]}", "unknown town 'nowhere'"),
        ("audience: all", "audience: {segments: [astronaut]}", "unknown segments"),
        (
            "start: 2022-10-01, end: 2022-12-31}\n    priority: 5",
            "start: 2022-10-01, end: 2022-09-01}\n    priority: 5",
            "end is before start",
        ),
    ],
)
def test_bad_definitions_name_file_and_field(
    config_dir: Path, old: str, new: str, expected: str
) -> None:
    path = config_dir / "campaigns.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_campaigns(config_dir, load_district(config_dir))
    message = str(info.value)
    assert str(path) in message
    assert "campaigns[0]" in message
    assert expected in message


def test_week_index_moves_by_one_each_week() -> None:
    monday = dt.date(2022, 10, 3)
    assert week_index(monday + dt.timedelta(days=6)) == week_index(monday)
    assert week_index(monday + dt.timedelta(days=7)) == week_index(monday) + 1
