"""The console's sections over plain HTTP, on uvicorn: every page and form refuses an anonymous
session, a role too low and a town user reaching outside its town; the CSRF token of every
POST is checked by tests/integration/test_console_http.py's walk over the app's routes."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scheduler import accounts
from scheduler.models import Role
from scheduler.settings import Settings
from tests.console_server import Console, serve_console
from tests.integration.test_console_http import PASSWORD, csrf_of, login, post_routes

ROOT = Path(__file__).resolve().parents[2]

# Every GET of the sections with arguments that exist in the sample district.
PAGES = [
    "/",
    "/?on=2022-10-12",
    "/fragments/today",
    "/occurrences",
    "/templates",
    "/templates/survey-notice",
    "/templates/letter-to-residents/letter",
    "/recipients",
    "/cases?month=2022-10",
    "/reports?month=2022-10",
    "/reports/print?month=2022-10",
    "/delivery?month=2022-10",
]
# Each POST and the least role allowed to make it.
FORMS: dict[str, Role] = {
    "/occurrences/1/pause": Role.OPERATOR,
    "/occurrences/1/resume": Role.OPERATOR,
    "/occurrences/1/retry": Role.OPERATOR,
    "/templates/survey-notice": Role.OPERATOR,
    "/templates/survey-notice/count": Role.OPERATOR,
    "/templates/survey-notice/approve": Role.APPROVER,
    "/recipients/upload": Role.OPERATOR,
    "/recipients/opt-out": Role.OPERATOR,
    "/cases/import": Role.OPERATOR,
    "/cases/add": Role.OPERATOR,
    "/reports/activities": Role.OPERATOR,
}
LOWER = {Role.OPERATOR: Role.VIEWER, Role.APPROVER: Role.OPERATOR}


@pytest.fixture
def console(settings: Settings, tmp_path: Path) -> Iterator[Console]:
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates" / "messages", templates)
    with serve_console(settings.model_copy(update={"templates_dir": templates})) as c:
        yield c


def token(client: httpx.Client) -> str:
    return csrf_of(client.get("/recipients").text)


def test_the_forms_listed_here_are_every_post_of_the_sections(console: Console) -> None:
    declared = {p for p in post_routes(console) if p not in ("/login", "/logout")}
    listed = {re.sub(r"/1/", "/{occurrence_id}/", p) for p in FORMS}
    listed = {p.replace("survey-notice", "{name}") for p in listed}
    assert declared == listed


def test_every_page_and_form_refuses_an_anonymous_session(console: Console) -> None:
    with console.client() as client:
        for path in [*PAGES, "/reports/download?month=2022-10", "/recipients/rejects/x.csv"]:
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login"), path
        csrf = csrf_of(client.get("/login").text)  # a real token of this anonymous session
        for path in FORMS:
            response = client.post(path, data={"csrf_token": csrf})
            assert response.status_code == 303, path
            assert response.headers["location"] == "/login", path


def test_every_page_renders_for_a_viewer_in_chinese(console: Console) -> None:
    accounts.create_user(console.core, "xu", Role.VIEWER, PASSWORD)
    with console.client() as client:
        login(client, "xu")
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[-500:])
            assert response.headers["cache-control"] == "no-store"
        assert "审核通过" not in client.get("/templates/survey-notice").text


@pytest.mark.parametrize("path", sorted(FORMS))
def test_every_form_refuses_a_role_too_low(console: Console, path: str) -> None:
    low = LOWER[FORMS[path]]
    accounts.create_user(console.core, "low", low, PASSWORD)
    with console.client() as client:
        login(client, "low")
        response = client.post(path, data={"csrf_token": token(client), "content": "x"})
        assert response.status_code == 403, path
        assert "没有权限" in response.text
        assert accounts.ROLE_LABELS[FORMS[path]] in response.text
    assert not [e for e in accounts.audit_entries(console.core) if e.actor == "low"][1:]


def test_a_town_user_is_refused_outside_its_town(console: Console) -> None:
    accounts.create_user(console.core, "li", Role.ADMIN, PASSWORD)  # district admin for setup
    accounts.create_user(console.core, "town", Role.APPROVER, PASSWORD, town="huanghu")
    with console.client() as client:
        login(client, "town")
        csrf = token(client)
        for path, data in (
            ("/templates/survey-notice/approve", {}),
            ("/templates/survey-notice", {"content": "x"}),
            ("/reports/activities", {"town": "baiguan", "month": "2022-10", "banners": "1"}),
            ("/cases/add", {
                "case_id": "X1", "time": "2022-10-02T10:00", "amount": "100",
                "town": "baiguan", "village": "longshan",
            }),
        ):  # fmt: skip
            response = client.post(path, data={"csrf_token": csrf, **data})
            assert response.status_code == 403, path
            assert "黄湖镇" in response.text or "镇（街道）账号" in response.text
        upload = client.post(
            "/recipients/upload",
            data={"csrf_token": csrf},
            files={"file": ("a.csv", b"phone,town,village\n", "text/csv")},
        )
        assert upload.status_code == 403
        assert client.get("/audit").status_code == 403
        assert (
            client.get("/reports/download?month=2022-10&format=xlsx&town=baiguan").status_code
            == 200
        )
        # ...but the report it gets is its own town's, whatever town it asked for.
        page = client.get("/reports?month=2022-10&town=baiguan").text
        assert (
            "填报单位：黄湖镇" in page
            and "百官街道" not in page.split("monthly-form", 1)[1].split("</table>")[0]
        )


def test_report_downloads_are_real_xlsx_and_pdf(console: Console) -> None:
    accounts.create_user(console.core, "xu", Role.VIEWER, PASSWORD)
    with console.client() as client:
        login(client, "xu")
        xlsx = client.get("/reports/download?month=2022-10&format=xlsx")
        assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
        assert "attachment" in xlsx.headers["content-disposition"]
        pdf = client.get("/reports/download?month=2022-10&format=pdf")
        assert pdf.status_code == 200 and pdf.content[:5] == b"%PDF-"
        assert client.get("/reports/download?month=2022-13").status_code == 400


def test_no_console_module_imports_the_store() -> None:
    """Pages call use cases (scheduler.services), never the store."""
    for path in (ROOT / "scheduler" / "console").rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not [n for n in names if n.startswith("scheduler.store")], path


def test_an_operator_retries_a_failed_occurrence_once_its_template_is_approved(
    console: Console,
) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    from scheduler.planner import Firing
    from scheduler.recipients import import_recipients_file

    core = console.core
    sample = ROOT / "recipients" / "sample.csv"
    few = core.settings.data_dir / "few.csv"
    few.parent.mkdir(parents=True, exist_ok=True)
    lines = sample.read_text("utf-8").splitlines()
    few.write_text("\n".join([lines[0], *lines[1::500]]) + "\n", encoding="utf-8")
    import_recipients_file(core.engine, core.district, few)
    template = core.settings.templates_dir / "survey-notice.sms.j2"
    template.write_text(template.read_text("utf-8") + "谢谢！\n", encoding="utf-8")
    campaign = core.campaigns.get("survey-notice")
    at = dt.datetime(2022, 10, 31, 10, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(dt.UTC)
    failed = core.planner().fire(Firing(campaign, at, campaign.name, "manual"))
    assert str(failed.state) == "failed"
    accounts.create_user(core, "zhao", Role.OPERATOR, PASSWORD)
    with console.client() as client:
        login(client, "zhao")
        page = client.get("/occurrences").text
        assert "失败" in page and "重试" in page and "暂停" not in page
        assert "执行失败" in client.get("/").text  # the dashboard's alert
        csrf = csrf_of(page)
        again = client.post(f"/occurrences/{failed.occurrence_id}/retry", data={"csrf_token": csrf})
        assert again.status_code == 303
        assert again.headers["location"].endswith(f"retried-{failed.occurrence_id}-failed")
        core.catalogue.approve("survey-notice", "王科长")
        done = client.post(f"/occurrences/{failed.occurrence_id}/retry", data={"csrf_token": csrf})
        assert done.status_code == 303 and "-failed" not in done.headers["location"]
        row = client.get("/occurrences").text.split(f"#{failed.occurrence_id}<", 1)[1]
        assert "待发送" in row.split("</tr>", 1)[0]
        # Retrying what is not failed is refused with the reason.
        refused = client.post(
            f"/occurrences/{failed.occurrence_id}/retry", data={"csrf_token": csrf}
        )
        assert refused.status_code == 400 and "不能重试" in refused.text
    retries = [e for e in accounts.audit_entries(core) if e.action == "occurrence.retry"]
    assert [e.actor for e in retries] == ["zhao", "zhao"]
