"""`pingan check` and the start of `pingan run`: every problem found, named by file, line,
field and reason, before anything is sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scheduler.campaigns import load_campaigns
from scheduler.config import load_district
from scheduler.core import Core
from scheduler.exceptions import ConfigError
from scheduler.preflight import preflight
from scheduler.settings import Settings
from tests.acceptance.test_cli_acceptance import ROOT, pingan
from tests.factories import add_recipients


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A copy of the sample configuration to break."""
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "config", folder)
    return folder


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "messages"
    shutil.copytree(ROOT / "templates" / "messages", folder)
    return folder


def edit(path: Path, old: str, new: str) -> int:
    """Replace the first `old` in the file; returns its line number (1-based)."""
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return line


def check(tmp_path: Path, config: Path, *args: str, **env: str) -> tuple[int, str, str]:
    done = pingan(tmp_path, "check", *args, ok=False, PINGAN_CONFIG_DIR=str(config), **env)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def test_the_sample_configuration_passes(tmp_path: Path, config: Path) -> None:
    rc, out, err = check(tmp_path, config)
    assert rc == 0, out + err
    assert out.startswith("ok: ")
    assert "6 campaigns" in out
    rc, out, _ = check(tmp_path, config, "--format", "json")
    data = json.loads(out)
    assert rc == 0
    assert data["ok"] is True
    assert data["problems"] == []
    assert data["checked"]["campaigns"] == 6


def test_a_typo_in_a_template_name_is_named_with_its_line_and_the_near_miss(
    tmp_path: Path, config: Path
) -> None:
    campaigns = config / "campaigns.yaml"
    line = edit(campaigns, "template: survey-notice", "template: survey-notise")
    # A second, unrelated mistake in another file is reported in the same run.
    quota_line = edit(
        config / "quotas.yaml", "    share: 50%\n", "    share: 50%\n    towns: [caoee]\n"
    )
    rc, out, _ = check(tmp_path, config)
    assert rc == 1
    lines = out.splitlines()
    assert (
        f"{campaigns}:{line}: campaigns[1].template: unknown template 'survey-notise' "
        "(did you mean 'survey-notice'?)"
    ) in lines
    assert (
        f"{config / 'quotas.yaml'}:{quota_line + 1}: rules[0].towns[0]: unknown town 'caoee' "
        "(did you mean 'caoe'?)"
    ) in lines
    assert len(lines) == 2, out
    data = json.loads(check(tmp_path, config, "--format", "json")[1])
    assert data["ok"] is False
    assert data["fatal"] is False  # one campaign's mistake does not stop the others
    assert {(p["path"], p["line"]) for p in data["problems"]} == {
        ("campaigns[1].template", line),
        ("rules[0].towns[0]", quota_line + 1),
    }


def test_a_malformed_share_is_named_with_its_line_not_a_traceback(
    tmp_path: Path, config: Path
) -> None:
    line = edit(config / "quotas.yaml", "    share: 50%\n", "    share: 5x%\n")
    rc, out, err = check(tmp_path, config)
    assert rc == 1
    assert "Traceback" not in out + err
    assert f"{config / 'quotas.yaml'}:{line}: rules[0].share: " in out
    assert "not a share: '5x%'" in out


def test_an_unapproved_template_is_reported_against_the_campaign(
    tmp_path: Path, config: Path, templates: Path
) -> None:
    changed = templates / "survey-notice.sms.j2"
    changed.write_text(changed.read_text(encoding="utf-8") + "谢谢！\n", encoding="utf-8")
    rc, out, _ = check(tmp_path, config, PINGAN_TEMPLATES_DIR=str(templates))
    assert rc == 1
    line = (config / "campaigns.yaml").read_text(encoding="utf-8").split("\n").index(
        "    template: survey-notice"
    ) + 1
    assert out.splitlines() == [
        f"{config / 'campaigns.yaml'}:{line}: campaigns[1].template: template 'survey-notice' "
        "is changed since its approval: review it, then "
        "`pingan templates approve survey-notice --by NAME`"
    ]


def test_a_yaml_syntax_error_names_its_line_and_is_fatal_for_run(
    tmp_path: Path, config: Path
) -> None:
    campaigns = config / "campaigns.yaml"
    line = edit(campaigns, "    priority: 10\n", "    priority: [10\n")
    rc, out, _ = check(tmp_path, config, "--format", "json")
    assert rc == 1
    (problem,) = json.loads(out)["problems"]
    assert problem["file"] == str(campaigns)
    assert problem["reason"].startswith("YAML syntax: ")
    assert f"line {line}" in problem["reason"]  # where the broken list began
    assert problem["fatal"] is True
    # `run` refuses before taking the lock, printing the problem.
    done = pingan(
        tmp_path,
        "run",
        "--once",
        "--clock",
        "2022-10-10T09:30",
        ok=False,
        PINGAN_CONFIG_DIR=str(config),
    )
    assert done.returncode == 1
    assert "YAML syntax" in done.stderr
    assert "refusing to start" in done.stderr
    assert "Traceback" not in done.stderr
    assert "service.active" not in done.stderr  # the lock was never taken


def test_run_starts_despite_a_problem_in_one_campaign(tmp_path: Path, config: Path) -> None:
    (config / "notes.yaml").write_text("a: [1\n", encoding="utf-8")
    rc, out, _ = check(tmp_path, config)
    assert rc == 1
    assert f"{config / 'notes.yaml'}:2: YAML syntax" in out
    done = pingan(
        tmp_path,
        "run",
        "--once",
        "--no-dispatch",
        "--clock",
        "2022-10-10T09:30",
        ok=False,
        PINGAN_CONFIG_DIR=str(config),
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    (warning,) = [e for e in events if e["event"] == "preflight.problem"]
    assert "notes.yaml:2: YAML syntax" in warning["problem"]
    assert names.index("preflight.problem") < names.index("service.active")


def test_bad_settings_are_problems_too(tmp_path: Path, config: Path) -> None:
    rc, out, _ = check(tmp_path, config, "--format", "json", PINGAN_WEEKLY_CAP="-1")
    assert rc == 1
    (problem,) = json.loads(out)["problems"]
    assert problem["path"] == "PINGAN_WEEKLY_CAP"
    assert problem["fatal"] is True


def _core(settings: Settings, config: Path, templates: Path) -> Core:
    return Core(settings.model_copy(update={"config_dir": config, "templates_dir": templates}))


def test_cross_references_each_with_its_line(
    settings: Settings, config: Path, templates: Path
) -> None:
    campaigns = config / "campaigns.yaml"
    channel = edit(campaigns, "template: letter-to-residents", "template: survey-notice")
    segment = edit(campaigns, "      elderly: targeted-elderly", "      elderly: targeted-eldrly")
    pool = edit(campaigns, "pool: weekly-slogans", "pool: weekly-slogan")
    quota = config / "quotas.yaml"
    subject = edit(quota, "    subject: town\n", "    subject: street\n")
    c = _core(settings, config, templates)
    try:
        report = preflight(c)
    finally:
        c.close()
    found = {(p.file, p.line, p.path): p.reason for p in report.problems}
    assert found[(str(campaigns), channel, "campaigns[3].template")] == (
        "template 'survey-notice' is a sms template but the campaign sends letter"
    )
    assert (
        found[(str(campaigns), segment, "campaigns[2].templates_by_segment.elderly")]
        == "unknown template 'targeted-eldrly' (did you mean 'targeted-elderly'?)"
    )
    assert found[(str(campaigns), pool, "campaigns[0].pool")].startswith(
        "rotation pool 'weekly-slogan' has no templates"
    )
    assert "did you mean 'weekly-slogans'?" in found[(str(campaigns), pool, "campaigns[0].pool")]
    assert "'town'" in found[(str(quota), subject, "rules[0].subject")]
    assert len(report.problems) == 4, report.problems
    assert not report.fatal


def test_templates_are_rendered_for_real_residents_of_every_town(
    settings: Settings, config: Path, templates: Path
) -> None:
    # Passes lint (every village, with lint's sample resident) but fails for the real
    # residents of 黄湖镇 only.
    (templates / "probe.sms.j2").write_text(
        "---\nchannel: sms\n---\n{{ town }}"
        "{% if town == '黄湖镇' and name.startswith('测试') %}{{ 1 // 0 }}{% endif %}\n",
        encoding="utf-8",
    )
    edit(config / "campaigns.yaml", "template: survey-notice", "template: probe")
    c = _core(settings, config, templates)
    try:
        add_recipients(c.engine, c.district, 60)
        report = preflight(c, per_town=2)
    finally:
        c.close()
    (problem,) = [p for p in report.problems if p.path == "campaign survey-notice"]
    assert problem.file == str(templates / "probe.sms.j2")
    assert problem.reason.startswith("fails to render for 1")  # a masked number
    assert "黄湖镇" in problem.reason
    assert "by zero" in problem.reason
    assert report.checked["residents_sampled"] == 2 * len(c.district.towns)
    # The probe is not approved: said once, against the campaign.
    assert any("'probe' is not approved" in p.reason for p in report.problems)


def test_no_database_is_fatal(
    settings: Settings, config: Path, templates: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("", encoding="utf-8")
    c = Core(
        settings.model_copy(
            update={
                "config_dir": config,
                "templates_dir": templates,
                "database_url": f"sqlite:///{blocked}/sub/pingan.db",
            }
        )
    )
    try:
        report = preflight(c)
    finally:
        c.close()
    (problem,) = report.fatal
    assert problem.file == "database"
    assert problem.reason.startswith("cannot open the database")


def test_the_loaders_errors_carry_the_line_too(config: Path) -> None:
    line = edit(config / "campaigns.yaml", 'cron: "0 10 * * wed"', 'cron: "0 10 * * 3"')
    with pytest.raises(ConfigError) as caught:
        load_campaigns(config, load_district(config))
    assert caught.value.problems == [
        f"line {line}: campaigns[2].schedule: write weekdays as mon..sun: "
        "APScheduler 3 counts 0 as Monday, crontab as Sunday"
    ]


def test_the_reply_rules_are_checked_with_their_line(tmp_path: Path, config: Path) -> None:
    """A phrase with Latin letters belongs under keywords: reported, like every other file."""
    replies = config / "replies.yaml"
    line = edit(replies, "  - 勿发\n", "  - stop it\n")
    rc, out, _ = check(tmp_path, config)
    assert rc == 1
    [problem] = out.splitlines()
    assert problem.startswith(f"{replies}:{line}: phrases[")
