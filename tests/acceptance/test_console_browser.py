"""The console in a real browser: Debian's chromium driven by Playwright, on uvicorn.

Locally these skip when chromium is missing; with CI=true they fail instead, so CI cannot pass
without having run them. Screenshots of every page land in <--output>/screenshots
(test-results/ by default), which CI keeps as artifacts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from scheduler.console.pages import SECTIONS
from scheduler.settings import Settings
from tests.console_server import Console, serve_console

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("PINGAN_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """The system's chromium (Playwright's own download is not reachable)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: apt install chromium fonts-noto-cjk to run browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": CHROMIUM_ARGS,
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """Each test's server has its own port; this also replaces pytest-playwright's fallback
    fixture, which pytest 9 warns about."""
    return None


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with serve_console(settings) as c:
        yield c


@pytest.fixture
def shots(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots go: <--output>/screenshots/<test name>-<page>.png."""
    folder = Path(str(pytestconfig.getoption("--output"))).absolute() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page: Page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert (shots / f"{name}.png").stat().st_size > 1000


def cli_add_user(settings: Settings, name: str, role: str, *extra: str) -> None:
    """`pingan users add` as an administrator runs it, password on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(settings.data_dir),
        PINGAN_DATABASE_URL=settings.database_url,
        PINGAN_LOG_FORMAT="json",
    )
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "users", "add", name, "--role", role, *extra],
        cwd=ROOT,
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def log_in(page: Page, name: str, password: str = PASSWORD) -> None:
    page.get_by_label("用户名").fill(name)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()


def test_admin_created_by_the_cli_logs_in_and_sees_every_page(
    console: Console, page: Page, shots: Path
) -> None:
    cli_add_user(console.core.settings, "admin", "admin")
    page.goto(console.base + "/")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    shot(page, shots, "login")
    log_in(page, "admin")
    expect(page).to_have_url(console.base + "/")
    expect(page.locator(".welcome")).to_have_text("欢迎，admin（管理员 · 全区）")
    expect(page.locator(".footer")).to_contain_text(re.compile(r"\d{4}年\d{1,2}月\d{1,2}日"))
    shot(page, shots, "overview")
    nav = page.get_by_role("navigation", name="主导航")
    for section in SECTIONS:
        nav.get_by_role("link", name=section.title, exact=True).click()
        expect(page.get_by_role("heading", name=section.title, exact=True)).to_be_visible()
        expect(nav.get_by_role("link", name=section.title, exact=True)).to_have_attribute(
            "aria-current", "page"
        )
        expect(page.get_by_text("功能建设中")).to_have_count(0)
        shot(page, shots, f"section-{section.key}")
    # 操作记录 lists the CLI's account creation and this login.
    rows = page.locator("table tbody tr")
    expect(rows.filter(has_text="添加用户")).to_have_count(1)
    expect(rows.filter(has_text="登录")).to_have_count(1)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(console.base + "/")
    expect(page.locator(".welcome")).to_contain_text("欢迎，admin")
    shot(page, shots, "overview-phone")
    page.get_by_role("button", name="退出").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(console.base + "/templates")
    expect(page).to_have_url(re.compile(r"/login\?next=/templates$"))


def test_wrong_password_shows_an_error_in_chinese(
    console: Console, page: Page, shots: Path
) -> None:
    cli_add_user(console.core.settings, "wang", "viewer")
    page.goto(console.base + "/login")
    log_in(page, "wang", "not-the-password")
    expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
    expect(page.get_by_label("用户名")).to_have_value("wang")
    shot(page, shots, "login-wrong-password")
    page.goto(console.base + "/")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_login_is_throttled_after_repeated_failures(
    console: Console, page: Page, shots: Path
) -> None:
    cli_add_user(console.core.settings, "wang", "viewer")
    page.goto(console.base + "/login")
    for _ in range(5):
        log_in(page, "wang", "guess-guess")
        expect(page.get_by_role("alert")).to_have_text("用户名或密码错误。")
    log_in(page, "wang", PASSWORD)  # even the right password waits now
    expect(page.get_by_role("alert")).to_have_text("登录失败次数过多，请15分钟后再试。")
    shot(page, shots, "login-throttled")
    page.goto(console.base + "/")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_a_town_viewer_sees_the_pages_of_its_scope(
    console: Console, page: Page, shots: Path
) -> None:
    cli_add_user(console.core.settings, "li", "viewer", "--town", "huanghu")
    page.goto(console.base + "/recipients")
    expect(page).to_have_url(re.compile(r"/login\?next=/recipients$"))
    log_in(page, "li")
    expect(page).to_have_url(console.base + "/recipients")  # back where it was going
    expect(page.get_by_role("heading", name="居民名单", exact=True)).to_be_visible()
    page.goto(console.base + "/")
    expect(page.locator(".welcome")).to_have_text("欢迎，li（查看员 · 黄湖镇）")
    shot(page, shots, "overview-town-viewer")
    nav = page.get_by_role("navigation", name="主导航")
    titles = [s.title for s in SECTIONS if not s.district_only]
    expect(nav.get_by_role("link")).to_have_text(titles)
    for section in SECTIONS:
        if section.district_only:
            continue
        page.goto(console.base + section.path)
        expect(page.get_by_role("heading", name=section.title, exact=True)).to_be_visible()
    page.goto(console.base + "/audit")
    expect(page.get_by_role("heading", name="没有权限")).to_be_visible()
    shot(page, shots, "forbidden")


def test_anonymous_visits_to_every_page_land_on_the_login(console: Console, page: Page) -> None:
    for section in SECTIONS:
        page.goto(console.base + section.path)
        expect(page.get_by_role("heading", name="登录")).to_be_visible()
        assert page.url.startswith(console.base + "/login")


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_missing_chromium_skips_locally_but_fails_in_ci(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PINGAN_TEST_CHROMIUM")}
    env.update(PINGAN_TEST_CHROMIUM=str(tmp_path / "no-chromium"), CI=ci)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--output", str(tmp_path / "out"), "--rootdir", str(ROOT),
            f"{__file__}::test_anonymous_visits_to_every_page_land_on_the_login",
            "-k", "sqlite",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"1 {'error' if outcome == 'failed' else outcome}" in done.stdout, done.stdout
    assert "no-chromium not found: apt install chromium" in done.stdout
    assert (done.returncode != 0) == (outcome == "failed")
