"""The console's sections in a real browser (Debian's chromium, Playwright) on uvicorn.

Each test works as the office staff would: the data comes in through the CLI or the pages,
and what a page shows is checked against the CLI's JSON or the database. The templates folder
is a copy per test, so editing a template never touches the repository's files.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect
from sqlalchemy import select

from scheduler.db import transaction
from scheduler.models import AuditEntry, Message, MessageBody
from scheduler.recipients import import_recipients_file
from scheduler.settings import Settings
from scheduler.store.counters import CounterIncrement, bump_counters

# The browser fixtures (system chromium, skip locally / fail in CI) and screenshot helpers.
from tests.acceptance.test_console_browser import (  # noqa: F401 - fixtures are used by name
    PASSWORD,
    base_url,
    browser_type_launch_args,
    log_in,
    shot,
)
from tests.console_server import Console, serve_console

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "console-dashboard.png"
# Read at import: the autouse fixture in conftest clears PINGAN_* before each test.
UPDATE_SCREENSHOT = os.environ.get("PINGAN_UPDATE_SCREENSHOT") == "1"


@pytest.fixture
def shots(pytestconfig: pytest.Config) -> Path:
    """<--output>/screenshots, as in test_console_browser (CI keeps the folder)."""
    folder = Path(str(pytestconfig.getoption("--output"))).absolute() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def site(settings: Settings, tmp_path: Path) -> Settings:
    """The sample district with a copy of the templates and 400 residents of the sample list."""
    templates = tmp_path / "templates" / "messages"
    shutil.copytree(ROOT / "templates" / "messages", templates)
    site = settings.model_copy(update={"templates_dir": templates})
    lines = (ROOT / "recipients" / "sample.csv").read_text("utf-8").splitlines()
    # Every town: take rows spread over the file (it is sorted by town).
    sample = tmp_path / "residents.csv"
    sample.write_text("\n".join([lines[0], *lines[1::90]]) + "\n", encoding="utf-8")
    from scheduler.core import Core

    core = Core(site)
    import_recipients_file(core.engine, core.district, sample)
    core.close()
    return site


@pytest.fixture
def console(site: Settings) -> Iterator[Console]:
    with serve_console(site) as c:
        yield c


def cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`pingan ...` as an administrator runs it on the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(settings.data_dir),
        PINGAN_DATABASE_URL=settings.database_url,
        PINGAN_TEMPLATES_DIR=str(settings.templates_dir),
        PINGAN_LOG_FORMAT="json",
    )
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def add_user(settings: Settings, name: str, role: str, *extra: str) -> None:
    done = cli(settings, "users", "add", name, "--role", role, *extra, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def audit(console: Console, action: str) -> list[AuditEntry]:
    with transaction(console.core.engine) as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_an_operator_pauses_and_resumes_an_occurrence(
    console: Console, page: Page, shots: Path
) -> None:
    settings = console.core.settings
    add_user(settings, "zhao", "operator")
    run = cli(settings, "campaigns", "run", "survey-notice", "--at", "2022-10-31T10:00")
    assert run.returncode == 0, run.stderr
    page.goto(console.base + "/occurrences")
    log_in(page, "zhao")
    row = page.locator("#occurrences tbody tr").filter(has_text="survey-notice")
    expect(row).to_have_count(1)
    expect(row.locator(".state")).to_have_text("待发送")
    expect(row.locator("td").nth(5)).not_to_have_text("0")  # queued
    shot(page, shots, "occurrences")
    row.get_by_role("button", name="暂停").click()
    expect(page.get_by_role("status")).to_have_text("操作已完成。")
    expect(row.locator(".state")).to_contain_text("已暂停")
    paused = cli(settings, "occurrences", "--format", "json")
    assert json.loads(paused.stdout)[0]["paused"] is True
    row.get_by_role("button", name="恢复").click()
    expect(row.locator(".state")).not_to_contain_text("已暂停")
    expect(row.get_by_role("button", name="暂停")).to_be_visible()
    assert json.loads(cli(settings, "occurrences", "--format", "json").stdout)[0]["paused"] is False
    assert [e.actor for e in audit(console, "occurrence.pause")] == ["zhao"]
    assert [e.actor for e in audit(console, "occurrence.resume")] == ["zhao"]
    page.goto(console.base + "/audit")  # an operator is not an approver: no audit page
    expect(page.get_by_role("heading", name="没有权限")).to_be_visible()


def test_an_approver_edits_a_template_sees_the_count_change_approves_and_the_firing_uses_it(
    console: Console, page: Page, shots: Path
) -> None:
    settings = console.core.settings
    add_user(settings, "wang", "approver")
    add_user(settings, "xu", "viewer")
    page.goto(console.base + "/templates/survey-notice")
    log_in(page, "wang")
    expect(page.locator(".approval-state")).to_contain_text("已审核")
    before = int(page.locator("#count .segments").inner_text())
    assert before == 2
    editor = page.get_by_label("模板内容")
    front = editor.input_value().split("---\n", 2)
    added = "请放心接听并如实作答。"
    text = (
        f"---\n{front[1]}---\n{{{{ district_short }}}}居民您好：{{{{ survey_phone_start }}}}至"
        f"{{{{ survey_phone_end }}}}省里将用{{{{ hotline }}}}来电，{added}\n"
    )
    editor.fill(text)
    live = page.locator("#live-count .segments")
    expect(live).to_have_text("1")  # the htmx count as carriers bill it
    shot(page, shots, "template-editing")
    page.get_by_role("button", name="保存并检查").click()
    expect(page.get_by_role("status")).to_contain_text("已保存")
    expect(page.locator(".approval-state")).to_contain_text("修改后未审核")
    expect(page.locator("#count .segments")).to_have_text("1")
    expect(page.locator(".diff .add")).to_contain_text([added])
    on_disk = (settings.templates_dir / "survey-notice.sms.j2").read_text("utf-8")
    assert added in on_disk
    listed = json.loads(cli(settings, "templates", "list", "--format", "json").stdout)
    assert next(t for t in listed if t["name"] == "survey-notice")["approval"] == "changed"
    shot(page, shots, "template-changed")

    # A viewer sees the change but no approve button, and a forged POST is refused.
    viewer = page.context.browser.new_context()  # type: ignore[union-attr]
    other = viewer.new_page()
    other.goto(console.base + "/templates/survey-notice")
    log_in(other, "xu")
    expect(other.locator(".approval-state")).to_contain_text("修改后未审核")
    expect(other.get_by_role("button", name="审核通过")).to_have_count(0)
    expect(other.get_by_label("模板内容")).to_have_count(0)
    token = other.locator("body").get_attribute("hx-headers") or ""
    refused = other.request.post(
        console.base + "/templates/survey-notice/approve",
        form={"csrf_token": json.loads(token)["X-CSRF-Token"]},
        max_redirects=0,
    )
    assert refused.status == 403 and "没有权限" in refused.text()
    viewer.close()

    page.get_by_role("button", name="审核通过").click()
    expect(page.locator(".approval-state")).to_contain_text("已审核（上次审核：wang")
    approvals = yaml.safe_load((settings.templates_dir / "approvals.yaml").read_text("utf-8"))
    assert approvals["survey-notice"]["approved_by"] == "wang"
    expect(page.locator("table").last).to_contain_text("wang")  # the revision and its author
    shot(page, shots, "template-approved")

    run = cli(settings, "campaigns", "run", "survey-notice", "--at", "2022-10-31T10:00")
    assert run.returncode == 0, run.stderr + run.stdout
    with transaction(console.core.engine) as s:
        bodies = s.scalars(
            select(MessageBody).join(Message, Message.body_id == MessageBody.id).distinct()
        ).all()
    assert bodies and all(added in b.text for b in bodies)
    assert {b.segments for b in bodies} == {1}
    assert [e.actor for e in audit(console, "template.edit")] == ["wang"]
    assert [e.actor for e in audit(console, "template.approve")] == ["wang"]


def test_a_bad_edit_is_refused_by_lint_and_the_file_is_unchanged(
    console: Console, page: Page
) -> None:
    settings = console.core.settings
    add_user(settings, "wang", "approver")
    path = settings.templates_dir / "survey-notice.sms.j2"
    original = path.read_text("utf-8")
    page.goto(console.base + "/templates/survey-notice")
    log_in(page, "wang")
    page.get_by_label("模板内容").fill(original + "{{ no_such_variable }}\n")
    page.get_by_role("button", name="保存并检查").click()
    expect(page.get_by_role("alert")).to_contain_text("检查未通过，未保存")
    expect(page.locator(".problems li").first).to_contain_text(re.compile(r"^第\d+行："))
    assert path.read_text("utf-8") == original


def test_upload_a_csv_with_a_bad_row_and_download_the_rejects(
    console: Console, page: Page, shots: Path, tmp_path: Path
) -> None:
    add_user(console.core.settings, "admin", "admin")
    upload = tmp_path / "新名单.csv"
    upload.write_text(
        "phone,town,village,name,household,carrier,residence,segments\n"
        "13900000001,huanghu,qingshan,张一,h1,,registered,elderly\n"
        "12345,huanghu,qingshan,李二,h2,,registered,\n"
        "13900000003,huanghu,qingshan,王三,h3,,registered,student\n",
        encoding="utf-8",
    )
    page.goto(console.base + "/recipients")
    log_in(page, "admin")
    total = int(page.locator("#total").inner_text())
    page.get_by_label("名单文件").set_input_files(str(upload))
    page.get_by_role("button", name="上传并导入").click()
    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("共 3 行，新增 2，更新 0，拒收 1")
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    shot(page, shots, "recipients-upload")
    with page.expect_download() as info:
        summary.get_by_role("link", name="下载拒收行文件").click()
    rows = list(csv.reader(io.StringIO(Path(info.value.path()).read_text("utf-8-sig"))))
    assert len(rows) == 2, rows
    assert "12345" in rows[1] and any(cell == "3" for cell in rows[1])  # line 3 of the file
    page.reload()
    expect(page.locator("#total")).to_have_text(str(total + 2))
    assert [e.actor for e in audit(console, "recipients.import")] == ["admin"]

    page.get_by_label("手机号").fill("13900000001")
    page.get_by_label("原因").fill("电话投诉")
    page.get_by_role("button", name="登记退订").click()
    expect(page.get_by_role("status")).to_contain_text("已登记退订 139****0001")
    assert [e.subject for e in audit(console, "recipients.opt_out")] == ["139****0001"]


def _seed_sends(console: Console) -> None:
    """Messages sent on 12 October 2022 as the dispatcher counts them."""
    district = console.core.district
    incs = []
    for i, town in enumerate(district.towns):
        for j, village in enumerate(town.villages):
            incs.append(
                CounterIncrement(
                    dt.date(2022, 10, 12),
                    town.id,
                    village.id,
                    ("mobile", "telecom", "unicom")[j % 3],
                    sent=200 * (i + 1) + 37 * j,
                    delivered=150 * (i + 1),
                )
            )
    with transaction(console.core.engine) as s:
        bump_counters(s, incs)


def _page_rows(page: Page) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for section in page.locator("section.quota").all():
        rule, window = section.get_attribute("data-rule"), section.get_attribute("data-window")
        for tr in section.locator("tbody tr").all():
            out[(str(rule), str(window), str(tr.get_attribute("data-subject")))] = {
                "rank": int(tr.locator(".rank").inner_text()),
                "target": int(tr.locator(".target").inner_text()),
                "actual": int(tr.locator(".actual").inner_text()),
                "attainment": tr.locator(".attainment").inner_text(),
                "laggard": tr.locator(".flag").count() == 1,
            }
    return out


def test_the_dashboard_shows_the_numbers_of_quota_status(
    console: Console, page: Page, shots: Path
) -> None:
    settings = console.core.settings
    _seed_sends(console)
    add_user(settings, "admin", "admin")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(console.base + "/?on=2022-10-12")
    log_in(page, "admin")
    expect(page).to_have_url(console.base + "/?on=2022-10-12")
    expect(page.locator("section.quota").first).to_be_visible()
    cli_json = cli(settings, "quota", "status", "--on", "2022-10-12", "--format", "json")
    assert cli_json.returncode == 0, cli_json.stderr
    expected = {
        (st["rule"], st["window"]["label"], r["subject"]["key"]): {
            "rank": r["rank"],
            "target": r["target"],
            "actual": r["actual"],
            "attainment": f"{r['attainment_pct']:.1f}%",
            "laggard": r["laggard"],
        }
        for st in json.loads(cli_json.stdout)
        for r in st["rows"]
    }
    assert expected and any(v["actual"] for v in expected.values())
    assert _page_rows(page) == expected
    expect(page.locator(".flag", has_text="晾晒").first).to_be_visible()
    expect(page.locator("canvas.quota-chart").first).to_be_visible()
    assert page.evaluate("() => Object.keys(Chart.instances).length") >= 1
    expect(page.locator("#today-stats")).to_be_visible()
    page.wait_for_timeout(300)  # Chart.js draws without animation; let it paint
    shot(page, shots, "dashboard")
    if UPDATE_SCREENSHOT:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)

    # Every other page renders for the admin, screenshot each (CI keeps them).
    for path, heading in (
        ("/templates", "模板"),
        ("/templates/letter-to-residents", "模板 letter-to-residents"),
        ("/recipients", "居民名单"),
        ("/cases?month=2022-10", "案件"),
        ("/reports?month=2022-10", "报表"),
        ("/delivery?month=2022-10", "投递"),
        ("/audit", "操作记录"),
    ):
        page.goto(console.base + path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        shot(page, shots, "page" + re.sub(r"[^a-z]+", "-", path))
    # The monthly form counts the same sends.
    page.goto(console.base + "/reports?month=2022-10")
    sent = sum(200 * (i + 1) + 37 * j for i, t in enumerate(console.core.district.towns)
               for j, _v in enumerate(t.villages))  # fmt: skip
    expect(page.locator("#monthly-form tr.total")).to_contain_text(str(sent))


def test_a_town_user_sees_and_acts_on_its_own_town_only(
    console: Console, page: Page, shots: Path
) -> None:
    settings = console.core.settings
    _seed_sends(console)
    add_user(settings, "li", "operator", "--town", "huanghu")
    page.goto(console.base + "/?on=2022-10-12")
    log_in(page, "li")
    towns = {k[2] for k in _page_rows(page) if "/" not in k[2]}
    carrier_or_town = towns - {"mobile", "telecom", "unicom", "broadnet"}
    assert carrier_or_town == {"huanghu"}
    shot(page, shots, "dashboard-town")
    page.goto(console.base + "/recipients")
    expect(page.locator("#by-town tbody tr")).to_have_count(1)
    expect(page.locator("#by-town")).to_contain_text("黄湖镇")
    expect(page.get_by_label("名单文件")).to_have_count(0)  # uploads are the district's
    page.goto(console.base + "/reports?month=2022-10")
    forms = page.locator("#activities form")
    expect(forms).to_have_count(1)
    assert forms.get_attribute("data-town") == "huanghu"
    forms.locator("input[name=households_visited]").fill("120")
    forms.locator("input[name=banners]").fill("6")
    forms.get_by_role("button", name="保存").click()
    expect(page.get_by_role("status")).to_contain_text("已保存黄湖镇的活动情况")
    expect(page.locator("#monthly-form tbody tr")).to_have_count(1)
    expect(page.locator("#monthly-form tbody tr")).to_contain_text("120")
    token = json.loads(page.locator("body").get_attribute("hx-headers") or "{}")["X-CSRF-Token"]
    other = page.request.post(
        console.base + "/reports/activities",
        form={"csrf_token": token, "town": "baiguan", "month": "2022-10", "banners": "9"},
        max_redirects=0,
    )
    assert other.status == 403 and "只能查看和操作黄湖镇" in other.text()
    assert [e.actor for e in audit(console, "activities.save")] == ["li"]


def test_a_case_added_in_the_page_raises_the_must_reach_alert(
    console: Console, page: Page, shots: Path
) -> None:
    add_user(console.core.settings, "zhao", "operator")
    page.goto(console.base + "/cases")
    log_in(page, "zhao")
    village = console.core.district.find_town("huanghu").villages[0]
    page.get_by_label("案件编号").fill("A2022-001")
    page.get_by_label("发案时间").fill("2022-10-20T15:30")
    page.get_by_label("损失金额(元)").fill("12万")
    page.get_by_label("镇（街道）").select_option("huanghu")
    page.get_by_label("村（社区）").fill(village.name)
    page.get_by_label("诈骗类型").fill("刷单返利")
    page.get_by_role("button", name="登记").click()
    result = page.locator("#case-result")
    expect(result).to_contain_text("新增 1 条")
    expect(result.locator(".must_reach")).to_contain_text("单笔损失达标")
    shot(page, shots, "case-alert")
    page.goto(console.base + "/cases?month=2022-10")
    expect(page.locator("#checkback tbody tr")).to_contain_text(["A2022-001"])
    assert [e.subject for e in audit(console, "cases.add")] == ["A2022-001"]
