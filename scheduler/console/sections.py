"""The console's sections: 总览, 发送批次, 模板, 居民名单, 案件, 报表, 投递.

Each handler checks the role (a dependency), parses the request, calls one use case in
`scheduler.services.console` and renders a template. Town users are limited by the use cases.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from scheduler import activities
from scheduler.accounts import Account
from scheduler.config import SEGMENTS
from scheduler.console.security import peer, requires
from scheduler.core import Core
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.models import Role
from scheduler.reports import CARRIER_NAMES, FORM_HEADER, report_html
from scheduler.services import console as uc

if TYPE_CHECKING:
    from scheduler.console.pages import Pages

OCCURRENCE_STATES = {
    "expanding": "生成中",
    "ready": "待发送",
    "sending": "发送中",
    "done": "已完成",
    "failed": "失败",
}
EXCLUSION_LABELS = {
    "opted_out": "已退订",
    "over_cap": "超过每周上限",
    "outside_audience": "不在发送人群",
    "invalid": "号码无效",
    "already_reached": "已覆盖",
    "over_limit": "超出条数限制",
    "render_error": "模板渲染失败",
}
KIND_LABELS = {"scheduled": "定时", "alert": "三必讲提醒", "topup": "补发", "manual": "手动"}
APPROVAL_LABELS = {"approved": "已审核", "changed": "修改后未审核", "never": "未审核"}
STATUS_LABELS = {"met": "已完成", "on_track": "进度正常", "behind": "落后"}
WINDOW_LABELS = {"week": "本周", "month": "本月", "cumulative": "累计"}
SUBJECT_LABELS = {"town": "镇（街道）", "village": "村（社区）", "carrier": "运营商"}
MONTH = re.compile(r"^20\d{2}-(0[1-9]|1[0-2])$")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _month(core: Core, value: str | None) -> str:
    if value and MONTH.match(value):
        return value
    return f"{core.clock().astimezone(core.settings.tz).date():%Y-%m}"


def _day(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise uc.ConsoleError(f"日期 {value!r} 格式不对，应为 2022-10-12。") from None


def _subject_name(row: Any) -> str:
    s = row.subject
    if s.kind == "carrier":
        return str(CARRIER_NAMES.get(s.carrier or "", s.name))
    return str(s.name)


def _zh_label(label: str) -> str:
    """The Chinese half of a bilingual label such as `messages sent (播发短信数量)`."""
    match = re.search(r"[(（]([^()（）]*[\u4e00-\u9fff][^()（）]*)[)）]", label)
    return match.group(1) if match else label


def _chart(st: Any) -> str:
    """Chart.js data of one rule's table: counted sends as bars, the target as a line."""
    rows = list(st.rows)
    return json.dumps(
        {
            "labels": [_subject_name(r) for r in rows],
            "actual": [r.actual for r in rows],
            "target": [r.target for r in rows],
            "laggard": [r.laggard for r in rows],
        },
        ensure_ascii=False,
    )


def _raw(content: bytes | str, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """A letter, a printable report or a download, with the pages' headers: never cached."""
    response = Response(content, media_type=media_type, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def add_section_routes(router: APIRouter, core: Core, pages: Pages) -> None:
    viewer = requires(core, Role.VIEWER)
    operator = requires(core, Role.OPERATOR)
    approver = requires(core, Role.APPROVER)
    pages.env.globals.update(
        occurrence_states=OCCURRENCE_STATES,
        exclusion_labels=EXCLUSION_LABELS,
        kind_labels=KIND_LABELS,
        approval_labels=APPROVAL_LABELS,
        status_labels=STATUS_LABELS,
        window_labels=WINDOW_LABELS,
        subject_labels=SUBJECT_LABELS,
        carrier_names=CARRIER_NAMES,
        Role=Role,
    )
    pages.env.filters["subject_name"] = _subject_name
    pages.env.filters["zh_label"] = _zh_label
    pages.env.filters["chart"] = _chart
    pages.env.filters["town_name"] = lambda t: uc.town_name(core, t)

    # ----------------------------------------------------------------------- 总览

    @router.get("/", response_model=None)
    def overview(
        request: Request, on: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        board = uc.dashboard(core, account, day=_day(on))
        return pages.render(
            request, "overview.html", account=account, current="overview", board=board
        )

    @router.get("/fragments/today", response_model=None)
    def today_fragment(request: Request, account: Account = Depends(viewer)) -> Response:
        return pages.render(
            request,
            "_today.html",
            account=account,
            today_sending=uc.today_sending(core, town=account.town_id),
        )

    # ----------------------------------------------------------------------- 发送批次

    @router.get("/occurrences", response_model=None)
    def occurrences(
        request: Request, campaign: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        return pages.render(
            request,
            "occurrences.html",
            account=account,
            current="occurrences",
            rows=uc.list_occurrences(core, account, campaign=campaign or None),
            done=request.query_params.get("done"),
        )

    def _occurrence_action(action: str) -> Any:
        def handler(
            request: Request, occurrence_id: int, account: Account = Depends(operator)
        ) -> Response:
            if action == "retry":
                result = uc.retry_occurrence(core, account, occurrence_id, peer=peer(request))
                done = f"retried-{occurrence_id}-{result.state}"
            else:
                uc.set_paused(core, account, occurrence_id, action == "pause", peer=peer(request))
                done = f"{action}d-{occurrence_id}"
            return RedirectResponse(f"/occurrences?done={done}", status_code=303)

        return handler

    for action in ("pause", "resume", "retry"):
        router.add_api_route(
            f"/occurrences/{{occurrence_id}}/{action}",
            _occurrence_action(action),
            methods=["POST"],
            response_model=None,
            name=f"console.occurrence.{action}",
        )

    # ----------------------------------------------------------------------- 模板

    @router.get("/templates", response_model=None)
    def templates(request: Request, account: Account = Depends(viewer)) -> Response:
        return pages.render(
            request,
            "templates.html",
            account=account,
            current="templates",
            rows=uc.list_templates(core),
        )

    def _template_page(
        request: Request,
        account: Account,
        name: str,
        *,
        town: str | None = None,
        segment: str | None = None,
        problems: list[str] | None = None,
        draft: str | None = None,
        status_code: int = 200,
        saved: bool = False,
    ) -> Response:
        if account.town_id:
            town = account.town_id
        detail = uc.template_detail(core, name)
        try:
            shown = uc.preview(core, name, town=town or None, segment=segment or None)
            preview_error = None
        except PingAnError as exc:
            shown, preview_error = None, str(exc)
        return pages.render(
            request,
            "template.html",
            account=account,
            current="templates",
            t=detail,
            preview=shown,
            preview_error=preview_error,
            towns=core.district.towns,
            segments=sorted(SEGMENTS),
            problems=problems or [],
            draft=draft if draft is not None else detail.content,
            saved=saved,
            status_code=status_code,
        )

    @router.get("/templates/{name}", response_model=None)
    def template(
        request: Request,
        name: str,
        town: str | None = None,
        segment: str | None = None,
        account: Account = Depends(viewer),
    ) -> Response:
        return _template_page(
            request,
            account,
            name,
            town=town,
            segment=segment,
            saved=request.query_params.get("saved") == "1",
        )

    @router.get("/templates/{name}/letter", response_model=None)
    def letter(
        request: Request, name: str, town: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        shown = uc.preview(core, name, town=account.town_id or town or None)
        if shown.channel != "letter":
            raise uc.ConsoleError("只有信件模板可以打印预览。")
        return _raw(shown.text, "text/html; charset=utf-8")

    @router.post("/templates/{name}", response_model=None)
    def save_template(
        request: Request,
        name: str,
        content: str = Form(...),
        account: Account = Depends(operator),
    ) -> Response:
        problems = uc.save_template(core, account, name, content, peer=peer(request))
        if problems:
            return _template_page(
                request, account, name, problems=problems, draft=content, status_code=422
            )
        return RedirectResponse(f"/templates/{quote(name)}?saved=1", status_code=303)

    @router.post("/templates/{name}/count", response_model=None)
    def count_draft(
        request: Request,
        name: str,
        content: str = Form(...),
        account: Account = Depends(operator),
    ) -> Response:
        try:
            shown = uc.preview_text(core, name, content, town=account.town_id)
            error = None
        except PingAnError as exc:
            shown, error = None, str(exc)
        return pages.render(
            request, "_count.html", account=account, preview=shown, preview_error=error
        )

    @router.post("/templates/{name}/approve", response_model=None)
    def approve(request: Request, name: str, account: Account = Depends(approver)) -> Response:
        uc.approve_template(core, account, name, peer=peer(request))
        return RedirectResponse(f"/templates/{quote(name)}", status_code=303)

    # ----------------------------------------------------------------------- 居民名单

    @router.get("/recipients", response_model=None)
    def recipients(request: Request, account: Account = Depends(viewer)) -> Response:
        return pages.render(
            request,
            "recipients.html",
            account=account,
            current="recipients",
            stats=uc.recipient_counts(core, account),
            district=core.district,
        )

    @router.post("/recipients/upload", response_model=None)
    async def upload(
        request: Request, file: UploadFile = File(...), account: Account = Depends(operator)
    ) -> Response:
        if account.town_id:
            raise uc.NotYourTown("居民名单由区平安办统一导入，镇（街道）账号不能上传。")
        stamp = core.clock().strftime("%Y%m%d%H%M%S")
        stored = f"{stamp}-{secrets.token_hex(4)}.csv"
        path = uc.uploads_dir(core) / stored
        with path.open("wb") as out:
            while chunk := await file.read(1 << 20):
                out.write(chunk)
        summary = await run_in_threadpool(
            uc.import_recipients, core, account, path, peer=peer(request)
        )
        return pages.render(
            request,
            "_upload_result.html",
            account=account,
            summary=summary,
            original=file.filename or stored,
            rejects=stored if summary.rejected else None,
        )

    @router.get("/recipients/rejects/{upload}", response_model=None)
    def rejects(request: Request, upload: str, account: Account = Depends(operator)) -> Response:
        if account.town_id:
            raise uc.NotYourTown("拒收行文件只对区级账号开放。")
        path = uc.rejects_file(core, upload)
        if path is None:
            raise UnknownName(f"拒收行文件 {upload}")
        return FileResponse(
            path,
            media_type="text/csv; charset=utf-8",
            filename=f"拒收行-{Path(upload).stem}.csv",
        )

    @router.post("/recipients/opt-out", response_model=None)
    def opt_out(
        request: Request,
        phone: str = Form(...),
        reason: str = Form(""),
        account: Account = Depends(operator),
    ) -> Response:
        masked, cancelled = uc.opt_out(core, account, phone, reason, peer=peer(request))
        return pages.render(
            request,
            "recipients.html",
            account=account,
            current="recipients",
            stats=uc.recipient_counts(core, account),
            district=core.district,
            notice=f"已登记退订 {masked}，取消排队短信 {cancelled} 条。",
        )

    # ----------------------------------------------------------------------- 案件

    @router.get("/cases", response_model=None)
    def cases_page(
        request: Request, month: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        m = _month(core, month)
        return pages.render(
            request,
            "cases.html",
            account=account,
            current="cases",
            month=m,
            report=uc.monthly_report(core, account, m),
            towns=core.district.towns,
        )

    @router.post("/cases/import", response_model=None)
    async def cases_import(
        request: Request, file: UploadFile = File(...), account: Account = Depends(operator)
    ) -> Response:
        if account.town_id:
            raise uc.NotYourTown("案件文件由区平安办导入；镇（街道）账号请逐条登记本镇案件。")
        path = uc.uploads_dir(core) / f"cases-{secrets.token_hex(6)}.csv"
        path.write_bytes(await file.read())
        result = await run_in_threadpool(uc.import_cases, core, account, path, peer=peer(request))
        return pages.render(
            request, "_cases_result.html", account=account, result=result, current="cases"
        )

    @router.post("/cases/add", response_model=None)
    def cases_add(
        request: Request,
        case_id: str = Form(...),
        time: str = Form(...),
        amount: str = Form(...),
        town: str = Form(...),
        village: str = Form(...),
        fraud_type: str = Form(""),
        place: str = Form(""),
        account: Account = Depends(operator),
    ) -> Response:
        result = uc.add_case(
            core,
            account,
            {
                "case_id": case_id,
                "time": time,
                "amount": amount,
                "town": town,
                "village": village,
                "fraud_type": fraud_type,
                "place": place,
            },
            peer=peer(request),
        )
        return pages.render(
            request, "_cases_result.html", account=account, result=result, current="cases"
        )

    # ----------------------------------------------------------------------- 报表

    @router.get("/reports", response_model=None)
    def reports_page(
        request: Request,
        month: str | None = None,
        town: str | None = None,
        account: Account = Depends(viewer),
    ) -> Response:
        m = _month(core, month)
        report = uc.monthly_report(core, account, m, town or None)
        return pages.render(
            request,
            "reports.html",
            account=account,
            current="reports",
            month=m,
            town=account.town_id or town or "",
            report=report,
            form_header=FORM_HEADER,
            towns=core.district.towns,
            activities=uc.activity_values(core, m),
            activity_columns=activities.COLUMNS,
            saved=request.query_params.get("saved"),
        )

    @router.get("/reports/download", response_model=None)
    def reports_download(
        month: str,
        town: str | None = None,
        format: str = "xlsx",
        account: Account = Depends(viewer),
    ) -> Response:
        if not MONTH.match(month):
            raise uc.ConsoleError("月份格式应为 2022-10。")
        if format not in ("xlsx", "pdf"):
            raise uc.ConsoleError("只能下载 xlsx 或 PDF。")
        data = uc.report_file(core, account, month, town or None, f".{format}")
        name = f"月报-{month}.{format}"
        return _raw(
            data,
            XLSX if format == "xlsx" else "application/pdf",
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
        )

    @router.get("/reports/print", response_model=None)
    def reports_print(
        month: str, town: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        if not MONTH.match(month):
            raise uc.ConsoleError("月份格式应为 2022-10。")
        report = uc.monthly_report(core, account, month, town or None)
        return _raw(report_html(report), "text/html; charset=utf-8")

    @router.post("/reports/activities", response_model=None)
    async def save_activities(request: Request, account: Account = Depends(operator)) -> Response:
        form = await request.form()
        town = str(form.get("town", ""))
        month = str(form.get("month", ""))
        if not MONTH.match(month):
            raise uc.ConsoleError("月份格式应为 2022-10。")
        values = {k: str(form.get(k, "")) for k, _label in activities.COLUMNS}
        await run_in_threadpool(
            lambda: uc.save_activities(core, account, town, month, values, peer=peer(request))
        )
        return RedirectResponse(
            f"/reports?month={month}&saved={quote(town)}#activities", status_code=303
        )

    # ----------------------------------------------------------------------- 投递

    @router.get("/delivery", response_model=None)
    def delivery(
        request: Request, month: str | None = None, account: Account = Depends(viewer)
    ) -> Response:
        m = _month(core, month)
        stats = uc.delivery(core, account, m)
        chart = json.dumps(
            {
                "labels": [r["key"] for r in stats["rows"]],
                "sent": [
                    r.get("sent", 0) + r.get("delivered", 0) + r.get("undelivered", 0)
                    if account.town_id is None
                    else r["sent"]
                    for r in stats["rows"]
                ],
                "delivered": [r.get("delivered", 0) for r in stats["rows"]],
                "failed": [(r.get("failed") or 0) + r.get("undelivered", 0) for r in stats["rows"]],
            },
            ensure_ascii=False,
        )
        return pages.render(
            request,
            "delivery.html",
            account=account,
            current="delivery",
            month=m,
            stats=stats,
            chart=chart,
        )
