"""The monthly report (平安宣传活动情况表, seed 001 attachment 7), filled from the database.

Sheet one is the form, one row per town, its SMS column counted from the send counters (sent,
and delivered beside it) and the other columns from the activities operators enter; sheet two
the attainment of every quota rule with a window in the month, ranked, laggards marked (晾晒);
sheet three delivery by carrier with failure reasons; sheet four the check-back of the month's
fraud cases (倒查: was the victim's village reached in the 30 days before); and a native Excel
chart of weekly sends against the weekly target per town.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.activities import COLUMNS as ACTIVITY_COLUMNS
from scheduler.activities import check_month
from scheduler.core import Core
from scheduler.delivery_stats import delivery_stats, month_bounds
from scheduler.logs import get_logger
from scheduler.quotas import (
    RuleStatus,
    load_rules,
    status,
    target_of,
    window_labelled,
    windows_overlapping,
)
from scheduler.store import activities as store
from scheduler.store.cases import cases_between
from scheduler.store.quotas import counter_days, sum_counters

log = get_logger("scheduler.reports")

TITLE = "平安宣传活动情况表"
SMS_SENT = "发送平安宣传短信(条)"
SMS_DELIVERED = "其中送达(条)"
FORM_HEADER = (
    ["乡镇街道"]
    + [label for key, label in ACTIVITY_COLUMNS[:5]]
    + [SMS_SENT, SMS_DELIVERED]
    + [label for key, label in ACTIVITY_COLUMNS[5:]]
)
STATUS_LABEL = {"met": "达标", "on_track": "进度正常", "behind": "滞后"}


@dataclass
class MonthlyReport:
    month: str
    district: str
    form: list[list[Any]] = field(default_factory=list)
    total: list[Any] = field(default_factory=list)
    quotas: list[RuleStatus] = field(default_factory=list)
    delivery: dict[str, Any] = field(default_factory=dict)
    checkback: list[list[Any]] = field(default_factory=list)
    weeks: list[dt.date] = field(default_factory=list)
    weekly: list[list[Any]] = field(default_factory=list)  # town, sends per week..., target


def build_monthly_report(core: Core, month: str, town: str | None = None) -> MonthlyReport:
    check_month(month)
    tz = core.settings.tz
    district = core.district
    towns = [district.find_town(town)] if town else list(district.towns)
    start, end = month_bounds(month, tz)
    first, last = start.date(), (end - dt.timedelta(days=1)).date()
    report = MonthlyReport(month=month, district=district.district.name)

    sums = sum_counters(core.engine, first_day=first, last_day=last, by="town")
    acts = store.activities_for(core.engine, month)
    totals = [0] * (len(FORM_HEADER) - 1)
    for t in towns:
        a = acts.get(t.id)
        sent, delivered = sums.get((t.id,), (0, 0))
        numbers = [getattr(a, k) if a else 0 for k, _ in ACTIVITY_COLUMNS[:5]]
        numbers += [sent, delivered]
        numbers += [getattr(a, k) if a else 0 for k, _ in ACTIVITY_COLUMNS[5:7]]
        texts = [getattr(a, k) if a else "" for k, _ in ACTIVITY_COLUMNS[7:]]
        report.form.append([t.name, *numbers, *texts])
        for i, n in enumerate(numbers):
            totals[i] += n
    report.total = ["合计", *totals[: len(FORM_HEADER) - 3], "", ""]

    now = min(core.clock(), end)
    rules = load_rules(core.settings.config_dir, district)
    pairs = [(r, w) for r in rules for w in windows_overlapping(r, first, last)]
    report.quotas = status(core.engine, pairs, district, now=now, tz=tz)
    report.delivery = delivery_stats(core, month=month, by="carrier")

    for case in cases_between(core.engine, start, end):
        if town and case.town_id != towns[0].id:
            continue
        before = case.occurred_at - dt.timedelta(days=30)
        reached = store.distinct_reached(
            core.engine, case.town_id, case.village_id, before, case.occurred_at
        )
        by_campaign = store.reach_before(
            core.engine, case.town_id, case.village_id, before, case.occurred_at
        )
        t_obj = district.towns_by_id.get(case.town_id)
        v_name = next(
            (v.name for v in (t_obj.villages if t_obj else ()) if v.id == case.village_id),
            case.village_id,
        )
        report.checkback.append(
            [
                case.case_id,
                case.occurred_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
                case.fraud_type,
                case.amount_yuan,
                t_obj.name if t_obj else case.town_id,
                v_name,
                "是" if reached else "否",
                reached,
                "、".join(f"{k}({v})" for k, v in sorted(by_campaign.items())) or "-",
            ]
        )

    report.weeks = _weeks_of(first, last)
    days = counter_days(
        core.engine,
        first_day=report.weeks[0] if report.weeks else first,
        last_day=(report.weeks[-1] + dt.timedelta(days=6)) if report.weeks else last,
        by="town",
    )
    for t in towns:
        per_day = days.get((t.id,), {})
        row: list[Any] = [t.name]
        for monday in report.weeks:
            row.append(sum(per_day.get(monday + dt.timedelta(days=i), (0, 0))[0] for i in range(7)))
        row.append(_weekly_target(rules, t.population, report.weeks[0] if report.weeks else first))
        report.weekly.append(row)
    return report


def _weeks_of(first: dt.date, last: dt.date) -> list[dt.date]:
    """Mondays in the month: a week belongs to the month its Monday is in."""
    day = first + dt.timedelta(days=(7 - first.weekday()) % 7)
    out = []
    while day <= last:
        out.append(day)
        day += dt.timedelta(days=7)
    return out


def _weekly_target(rules: list[Any], population: int, monday: dt.date) -> int:
    """The town's weekly target: a weekly rule's, else a monthly rule's spread over the weeks."""
    label = f"{monday.isocalendar().year}-W{monday.isocalendar().week:02d}"
    for r in rules:
        if r.subject == "town" and r.window == "week" and window_labelled(r, label):
            return target_of(population, r.final_share)
    for r in rules:
        if (
            r.subject == "town"
            and r.window == "month"
            and window_labelled(r, monday.strftime("%Y-%m"))
        ):
            return round(target_of(population, r.final_share) * 7 / 30)
    return 0


# -- writers ---------------------------------------------------------------------------------


def write_report(report: MonthlyReport, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".xlsx":
        _write_xlsx(report, out)
    elif suffix == ".csv":
        _write_csv(report, out)
    elif suffix == ".md":
        out.write_text(_markdown(report), encoding="utf-8")
    else:
        from scheduler.exceptions import PingAnError

        raise PingAnError(f"{out}: write .xlsx, .csv or .md")
    return out


def _quota_rows(report: MonthlyReport) -> list[list[Any]]:
    rows = []
    for st in report.quotas:
        for r in st.rows:
            rows.append(
                [
                    st.rule.name or st.rule.id,
                    st.window.label,
                    "送达"
                    if st.rule.measure == "messages_delivered"
                    else ("覆盖人数" if st.rule.measure == "people_reached" else "发送条数"),
                    r.rank,
                    r.subject.name,
                    r.target,
                    r.actual,
                    float(r.attainment),
                    r.shortfall,
                    STATUS_LABEL.get(str(r.status), str(r.status)),
                    "晾晒" if r.laggard else "",
                ]
            )
    return rows


QUOTA_HEADER = [
    "规则",
    "周期",
    "口径",
    "排名",
    "对象",
    "目标",
    "实际",
    "完成率(%)",
    "差额",
    "状态",
    "落后通报",
]
CHECKBACK_HEADER = [
    "案件编号",
    "发案时间",
    "诈骗类型",
    "损失金额(元)",
    "乡镇街道",
    "受害人居住村社",
    "发案前30天是否覆盖",
    "覆盖人数",
    "覆盖活动(人数)",
]


def _delivery_rows(report: MonthlyReport) -> tuple[list[str], list[list[Any]]]:
    header = ["运营商", "已发送", "已送达", "未送达", "失败", "状态未知", "送达率"]
    rows = []
    for r in report.delivery.get("rows", []):
        rows.append(
            [
                r["key"],
                r["sent"] + r["delivered"] + r["undelivered"] + r["failed"],
                r["delivered"],
                r["undelivered"],
                r["failed"],
                r["unknown"],
                f"{r['delivery_rate']:.1%}" if r["delivery_rate"] is not None else "-",
            ]
        )
    return header, rows


def _write_xlsx(report: MonthlyReport, out: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.chart import BarChart, Reference
    from openpyxl.styles import Alignment, Font

    wb = Workbook()
    ws = wb.active
    ws.title = "活动情况表"
    ws.append([f"{TITLE}（{report.month}）"])
    ws["A1"].font = Font(bold=True, size=14)
    ws.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(FORM_HEADER))
    ws.append(
        [
            f"填报单位：{report.district}平安办　"
            "统计口径：短信按发送日（本地时间）计，送达为其中已确认送达"
        ]
    )
    ws.append(FORM_HEADER)
    for row in report.form:
        ws.append(row)
    ws.append(report.total)
    for cell in ws[3]:
        cell.font = Font(bold=True)
        cell.alignment = Alignment(wrap_text=True, vertical="center")
    for col, width in zip(
        "ABCDEFGHIJKL", (12, 12, 16, 10, 14, 14, 14, 12, 12, 12, 14, 30), strict=False
    ):
        ws.column_dimensions[col].width = width

    q = wb.create_sheet("配额完成情况")
    q.append(QUOTA_HEADER)
    for row in _quota_rows(report):
        q.append(row)

    d = wb.create_sheet("分运营商发送")
    header, rows = _delivery_rows(report)
    d.append(header)
    for row in rows:
        d.append(row)
    d.append([])
    d.append(["失败原因（错误码）", "条数", "含义"])
    for e in report.delivery.get("top_errors", []):
        d.append([e["code"], e["count"], e["meaning"]])

    c = wb.create_sheet("发案倒查")
    c.append(CHECKBACK_HEADER)
    for row in report.checkback:
        c.append(row)

    w = wb.create_sheet("每周发送")
    w.append(["乡镇街道", *[f"{m.month}月{m.day}日起" for m in report.weeks], "每周目标"])
    for row in report.weekly:
        w.append(row)
    if report.weekly:
        chart = BarChart()
        chart.type = "col"
        chart.title = f"{report.month} 各乡镇每周短信发送与目标"
        chart.y_axis.title = "条"
        n_cols = len(report.weeks) + 1
        data = Reference(
            w, min_col=2, max_col=1 + n_cols, min_row=1, max_row=1 + len(report.weekly)
        )
        cats = Reference(w, min_col=1, min_row=2, max_row=1 + len(report.weekly))
        chart.add_data(data, titles_from_data=True)
        chart.set_categories(cats)
        chart.width, chart.height = 22, 9
        w.add_chart(chart, f"A{len(report.weekly) + 4}")
    for sheet in wb.worksheets:
        # Printed as filed: landscape A4, each sheet one page wide.
        sheet.page_setup.orientation = "landscape"
        sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
        sheet.sheet_properties.pageSetUpPr.fitToPage = True
        sheet.page_setup.fitToWidth = 1
        sheet.page_setup.fitToHeight = 0
    ws.row_dimensions[3].height = 48
    wb.save(out)


def _write_csv(report: MonthlyReport, out: Path) -> None:
    with out.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"{TITLE}（{report.month}）"])
        writer.writerow(FORM_HEADER)
        writer.writerows(report.form)
        writer.writerow(report.total)


def _markdown(report: MonthlyReport) -> str:
    def table(header: list[Any], rows: list[list[Any]]) -> str:
        lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(x).replace("|", "/") for x in r) + " |" for r in rows]
        return "\n".join(lines)

    header, rows = _delivery_rows(report)
    parts = [
        f"# {TITLE}（{report.month}）",
        f"填报单位：{report.district}平安办",
        table(FORM_HEADER, [*report.form, report.total]),
        "## 配额完成情况（排名、晾晒）",
        table(QUOTA_HEADER, _quota_rows(report)),
        "## 分运营商发送",
        table(header, rows),
        "## 发案倒查",
        table(CHECKBACK_HEADER, report.checkback) if report.checkback else "本月无案件。",
        "## 每周发送",
        table(["乡镇街道", *[m.isoformat() for m in report.weeks], "每周目标"], report.weekly),
    ]
    return "\n\n".join(parts) + "\n"


def report_path(core: Core, month: str) -> Path:
    return core.settings.effective_reports_dir / f"月报-{month}.xlsx"


def write_due_report(core: Core, today: dt.date) -> Path | None:
    """On the due day (PINGAN_REPORT_DUE_DAY), write that month's report once."""
    if today.day != core.settings.report_due_day:
        return None
    month = today.strftime("%Y-%m")
    path = report_path(core, month)
    if path.exists():
        return None
    write_report(build_monthly_report(core, month), path)
    log.info("report.written", month=month, path=str(path))
    return path
