"""The monthly report (平安宣传活动情况表, seed 001 attachment 7), filled from the database.

One form per unit, laid out as attachment 7 (the unit, the eight count fields in their two
rows, 其他, 活动开展情况, 备注 with the due date), its SMS field counted from the send counters
(the local day a message was sent) plus the sends the town reported; then a district summary,
the quota ranking (the same `quotas.status` that `pingan quota status` calls, at the same
moment, so the two cannot disagree), delivery by carrier, the 倒查 check-back of the month's
fraud cases and the weekly sends against their targets with a chart. Written as xlsx (one A4
page per sheet), PDF (WeasyPrint), csv or markdown.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from scheduler.activities import COLUMNS as ACTIVITY_COLUMNS
from scheduler.activities import check_month
from scheduler.cell_safety import neutralise_cell
from scheduler.core import Core
from scheduler.delivery_stats import delivery_stats
from scheduler.exceptions import PingAnError
from scheduler.firings import campaign_name_of
from scheduler.logs import get_logger
from scheduler.numbers import half_up
from scheduler.periods import Month
from scheduler.quotas import (
    MEASURES,
    QuotaRule,
    RuleStatus,
    Window,
    load_rules,
    status,
    target_of,
    week_window,
    weekly_share_of_month,
    window_labelled,
    windows_overlapping,
)
from scheduler.store import activities as store
from scheduler.store import sends as sends_store
from scheduler.store.cases import cases_between
from scheduler.store.quotas import counter_days, sum_counters

log = get_logger("scheduler.reports")

TITLE = "平安宣传活动情况表"
SMS_SENT = "发送平安宣传短信(条)"
SMS_OWN = "其中本系统发送(条)"
SMS_REPORTED = "其中自行报送(条)"
SMS_DELIVERED = "本系统已送达(条)"
ACTIVITY_LABELS = dict(ACTIVITY_COLUMNS)
# Attachment 7's eight count fields, in its two rows of four.
FORM_ROWS: tuple[tuple[str, ...], ...] = (
    ("households_visited", "leaflets", "banners", "boards"),
    ("wechat_posts", "sms", "questionnaires", "volunteer_activities"),
)
FIELD_LABELS = {**ACTIVITY_LABELS, "sms": SMS_SENT}
NUMBER_FIELDS = tuple(k for row in FORM_ROWS for k in row if k != "sms")
OTHER_LABEL = "其　他"
DESCRIPTION_LABEL = "活动开展情况（内容）"
ATTACHMENT_LINE = "活动照片或视频请另附：共＿＿＿份（照片＿＿＿张、视频＿＿＿个）"
FORM_HEADER = [
    "乡镇街道",
    *[ACTIVITY_LABELS[k] for k in FORM_ROWS[0]],
    ACTIVITY_LABELS["wechat_posts"],
    SMS_SENT,
    SMS_OWN,
    SMS_REPORTED,
    SMS_DELIVERED,
    ACTIVITY_LABELS["questionnaires"],
    ACTIVITY_LABELS["volunteer_activities"],
    ACTIVITY_LABELS["other"],
    ACTIVITY_LABELS["description"],
]
STATUS_LABEL = {"met": "达标", "on_track": "进度正常", "behind": "滞后"}
CARRIER_NAMES = {"mobile": "移动", "telecom": "电信", "unicom": "联通", "broadnet": "广电"}
SOURCE_LABELS = {"own": "本系统", "reported": "报送", "both": "本系统+报送"}


def carrier_name(carrier_id: str) -> str:
    return CARRIER_NAMES.get(carrier_id, carrier_id)


@dataclass
class UnitForm:
    """One unit's attachment 7: its eight counts, 其他 and the activities text."""

    unit: str
    counts: dict[str, int]
    other: str = ""
    description: str = ""
    sms_own: int = 0
    sms_reported: int = 0
    sms_delivered: int = 0


@dataclass
class MonthlyReport:
    month: str
    district: str
    unit: str  # 填报单位: the district office, or the town with --town
    due: dt.date
    forms: list[UnitForm] = field(default_factory=list)
    total_form: UnitForm | None = None
    quotas: list[RuleStatus] = field(default_factory=list)
    delivery: dict[str, Any] = field(default_factory=dict)
    checkback_days: int = 30
    checkback: list[list[Any]] = field(default_factory=list)
    weeks: list[Window] = field(default_factory=list)
    weekly: list[list[Any]] = field(default_factory=list)  # town, (sent, target) per week

    @property
    def form(self) -> list[list[Any]]:
        """The summary rows, one per town (FORM_HEADER)."""
        return [_summary_row(f) for f in self.forms]

    @property
    def total(self) -> list[Any]:
        """The summary's total row (FORM_HEADER)."""
        return _summary_row(self.total_form) if self.total_form else []


def _summary_row(f: UnitForm) -> list[Any]:
    c = f.counts
    return [
        f.unit,
        *[c[k] for k in FORM_ROWS[0]],
        c["wechat_posts"],
        c["sms"],
        f.sms_own,
        f.sms_reported,
        f.sms_delivered,
        c["questionnaires"],
        c["volunteer_activities"],
        f.other,
        f.description,
    ]


def report_month(today: dt.date, period: str) -> str:
    """The month a report made on `today` covers: this one (`current`, seed 001's 25th) or the
    one before (`previous`, seed 002's 3rd)."""
    month = Month.of(today)
    return str(month.previous if period == "previous" else month)


def due_date(month: str, due_day: int, period: str) -> dt.date:
    """The day a month's report is due: in the month itself, or in the next one."""
    m = Month.parse(month)
    return (m.next if period == "previous" else m).first_day.replace(day=due_day)


def build_monthly_report(core: Core, month: str, town: str | None = None) -> MonthlyReport:
    check_month(month)
    settings = core.settings
    tz = settings.tz
    district = core.district
    towns = [district.find_town(town)] if town else list(district.towns)
    start, end = Month.parse(month).bounds(tz)
    first, last = start.date(), (end - dt.timedelta(days=1)).date()
    office = f"{district.district.name}平安办"
    report = MonthlyReport(
        month=month,
        district=district.district.name,
        unit=towns[0].name if town else office,
        due=due_date(month, settings.report_due_day, settings.report_period),
        checkback_days=settings.alerts.checkback_days,
    )

    sums = sum_counters(core.engine, first_day=first, last_day=last, by="town")
    reported = sends_store.sum_reported(
        core.engine, first_day=first, last_day=last, by="town", column="messages_sent"
    )
    acts = store.activities_for(core.engine, month)
    for t in towns:
        a = acts.get(t.id)
        own, delivered = sums.get((t.id,), (0, 0))
        rep = reported.get((t.id,), 0)
        counts = {k: int(getattr(a, k)) if a else 0 for k in NUMBER_FIELDS}
        counts["sms"] = own + rep
        report.forms.append(
            UnitForm(
                t.name,
                counts,
                other=a.other if a else "",
                description=a.description if a else "",
                sms_own=own,
                sms_reported=rep,
                sms_delivered=delivered,
            )
        )
    keys = [k for row in FORM_ROWS for k in row]
    report.total_form = UnitForm(
        "合计" if not town else towns[0].name,
        {k: sum(f.counts[k] for f in report.forms) for k in keys},
        sms_own=sum(f.sms_own for f in report.forms),
        sms_reported=sum(f.sms_reported for f in report.forms),
        sms_delivered=sum(f.sms_delivered for f in report.forms),
    )

    # The ranking: every rule window sharing a day with the month (a week across the month end
    # appears in both months, labelled), judged by quotas.status at the moment `quota status`
    # would judge it, so an open window shows as 进行中 with today's figures.
    now = core.clock()
    rules = load_rules(settings.config_dir, district)
    pairs = [(r, w) for r in rules for w in windows_overlapping(r, first, last)]
    report.quotas = status(core.engine, pairs, district, now=now, tz=tz)
    if town:
        report.quotas = [_only_town(st, towns[0].id) for st in report.quotas]
        report.quotas = [st for st in report.quotas if st.rows]
    report.delivery = delivery_stats(core, month=month, by="carrier")

    look_back = dt.timedelta(days=settings.alerts.checkback_days)
    for case in cases_between(core.engine, start, end):
        if town and case.town_id != towns[0].id:
            continue
        before = case.occurred_at - look_back
        reached = store.distinct_reached(
            core.engine, case.town_id, case.village_id, before, case.occurred_at
        )
        delivered_people = store.distinct_reached(
            core.engine,
            case.town_id,
            case.village_id,
            before,
            case.occurred_at,
            states=store.DELIVERED,
        )
        by_campaign: dict[str, int] = {}
        for key, n in store.reach_before(
            core.engine, case.town_id, case.village_id, before, case.occurred_at
        ).items():
            name = campaign_name_of(key, core.campaigns.by_name) or key
            by_campaign[name] = by_campaign.get(name, 0) + n
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
                f"{Decimal(case.amount_yuan):,.2f}",
                t_obj.name if t_obj else case.town_id,
                v_name,
                "是" if reached else "否",
                reached,
                delivered_people,
                "、".join(f"{k}({v})" for k, v in sorted(by_campaign.items())) or "-",
            ]
        )

    report.weeks = _weeks_of(first, last)
    days = counter_days(
        core.engine,
        first_day=report.weeks[0].start if report.weeks else first,
        last_day=report.weeks[-1].end if report.weeks else last,
        by="town",
    )
    for t in towns:
        per_day = days.get((t.id,), {})
        row: list[Any] = [t.name]
        for w in report.weeks:
            sent = sum(per_day.get(w.start + dt.timedelta(days=i), (0, 0))[0] for i in range(7))
            row.append((sent, weekly_target(rules, t.population, w.start)))
        report.weekly.append(row)
    return report


def _only_town(st: RuleStatus, town_id: str) -> RuleStatus:
    rows = tuple(r for r in st.rows if r.subject.town_id == town_id)
    return RuleStatus(st.rule, st.window, rows, open=st.open)


def _weeks_of(first: dt.date, last: dt.date) -> list[Window]:
    """The ISO weeks sharing a day with the month: one across the month end is in both."""
    monday = first - dt.timedelta(days=first.weekday())
    out = []
    while monday <= last:
        out.append(week_window(monday))
        monday += dt.timedelta(days=7)
    return out


def weekly_target(rules: list[QuotaRule], population: int, monday: dt.date) -> int:
    """A town's target for a week: a weekly rule's, else its month's target spread over the
    month's real days (half up: November's 1065 → 249)."""
    label = week_window(monday).label
    for r in rules:
        if r.subject == "town" and r.window == "week" and window_labelled(r, label):
            return target_of(population, r.final_share)
    # A week across the month end takes the month its last day is in.
    sunday = monday + dt.timedelta(days=6)
    for r in rules:
        if r.subject == "town" and r.window == "month" and window_labelled(r, f"{sunday:%Y-%m}"):
            return weekly_share_of_month(target_of(population, r.final_share), sunday)
    return 0


def window_label(window: Window, first: dt.date, last: dt.date) -> str:
    """A window's label, marked when it crosses the report month's edge."""
    if window.start < first or window.end > last:
        return f"{window.label}（{window.start:%m-%d}至{window.end:%m-%d}，跨月）"
    return window.label


# -- tables shared by every format -----------------------------------------------------------

QUOTA_HEADER = [
    "规则",
    "周期",
    "周期状态",
    "口径",
    "计入",
    "排名",
    "对象",
    "目标",
    "本系统发送",
    "报送",
    "计入合计",
    "完成率(%)",
    "差额",
    "状态",
    "落后通报",
]


def _month_days(report: MonthlyReport) -> tuple[dt.date, dt.date]:
    month = Month.parse(report.month)
    return month.first_day, month.last_day


def quota_rows(report: MonthlyReport) -> list[list[Any]]:
    first, last = _month_days(report)
    rows = []
    for st in report.quotas:
        for r in st.rows:
            name = r.subject.name
            if r.subject.kind == "carrier":
                name = carrier_name(r.subject.carrier)
            rows.append(
                [
                    st.rule.name or st.rule.id,
                    window_label(st.window, first, last),
                    "进行中" if st.open else "已结束",
                    MEASURES[st.rule.measure].zh,
                    SOURCE_LABELS[st.rule.counted_sources],
                    r.rank,
                    name,
                    r.target,
                    r.own,
                    r.reported,
                    r.actual,
                    float(r.attainment),
                    r.shortfall,
                    STATUS_LABEL.get(str(r.status), str(r.status)),
                    "晾晒" if r.laggard else "",
                ]
            )
    return rows


def _checkback_header(report: MonthlyReport) -> list[str]:
    return [
        "案件编号",
        "发案时间",
        "诈骗类型",
        "损失金额(元)",
        "乡镇街道",
        "受害人居住村社",
        f"发案前{report.checkback_days}天是否覆盖",
        "覆盖人数",
        "送达人数",
        "覆盖活动(人数)",
    ]


DELIVERY_HEADER = ["运营商", "已发送", "已送达", "未送达", "失败", "状态未知", "待发送", "送达率"]


def _delivery_rows(report: MonthlyReport) -> tuple[list[str], list[list[Any]]]:
    rows = []
    for r in report.delivery.get("rows", []):
        rows.append(
            [
                carrier_name(r["key"]),
                r["sent"] + r["delivered"] + r["undelivered"] + r["failed"],
                r["delivered"],
                r["undelivered"],
                r["failed"],
                r["unknown"],
                r["pending"],
                f"{half_up(Decimal(str(r['delivery_rate'])) * 100, 1)}%"
                if r["delivery_rate"] is not None
                else "-",
            ]
        )
    return DELIVERY_HEADER, rows


def _weekly_tables(report: MonthlyReport) -> tuple[list[str], list[list[Any]]]:
    first, last = _month_days(report)
    header = ["乡镇街道"]
    for w in report.weeks:
        label = window_label(w, first, last)
        header += [f"{label} 发送", f"{w.label} 目标", f"{w.label} 完成率(%)"]
    rows = []
    for row in report.weekly:
        out: list[Any] = [row[0]]
        for sent, target in row[1:]:
            pct = float(half_up(Decimal(sent) * 100 / target, 1)) if target else None
            out += [sent, target, pct]
        rows.append(out)
    return header, rows


def _form_note(report: MonthlyReport, form: UnitForm) -> str:
    return (
        f"备注：此表请于{report.due.year}年{report.due.month}月{report.due.day}日前报"
        f"{report.district}平安办。发送平安宣传短信{form.counts['sms']}条，其中本系统发送"
        f"{form.sms_own}条（按发送日计，已送达{form.sms_delivered}条），自行报送"
        f"{form.sms_reported}条。"
    )


def _month_cn(month: str) -> str:
    y, m = month.split("-")
    return f"{y}年{int(m)}月"


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
    elif suffix == ".pdf":
        write_pdf(report_html(report), out)
    else:
        raise PingAnError(f"{out}: write .xlsx, .pdf, .csv or .md")
    return out


def _safe(row: list[Any]) -> list[Any]:
    return [neutralise_cell(v) for v in row]


FORM_WIDTHS = (24, 24, 18, 24)


def _form_sheet(wb: Any, title: str, report: MonthlyReport, form: UnitForm) -> None:
    """Attachment 7 for one unit: bordered, title centred, one A4 portrait page."""
    from openpyxl.styles import Alignment, Border, Font, Side

    ws = wb.create_sheet(title)
    thin = Side(style="thin")
    box = Border(left=thin, right=thin, top=thin, bottom=thin)
    wrap = Alignment(wrap_text=True, vertical="center", horizontal="center")
    left = Alignment(wrap_text=True, vertical="top", horizontal="left")
    for i, width in enumerate(FORM_WIDTHS, start=1):
        ws.column_dimensions[chr(64 + i)].width = width

    ws["A1"] = TITLE
    ws["A1"].font = Font(bold=True, size=18)
    ws["A1"].alignment = Alignment(horizontal="center", vertical="center")
    ws.merge_cells("A1:D1")
    ws.row_dimensions[1].height = 36
    ws["A2"] = neutralise_cell(f"填报单位（乡镇街道、部门单位）：{form.unit}")
    ws.merge_cells("A2:C2")
    ws["D2"] = f"月份：{_month_cn(report.month)}"
    ws.row_dimensions[2].height = 24
    row = 3
    for fields in FORM_ROWS:
        for col, key in enumerate(fields, start=1):
            ws.cell(row, col, FIELD_LABELS[key]).font = Font(bold=True)
            ws.cell(row + 1, col, form.counts[key])
        ws.row_dimensions[row].height = 36
        ws.row_dimensions[row + 1].height = 28
        row += 2
    ws.cell(7, 1, OTHER_LABEL).font = Font(bold=True)
    ws.cell(7, 2, neutralise_cell(form.other))
    ws.merge_cells("B7:D7")
    ws.row_dimensions[7].height = 48
    ws.cell(8, 1, DESCRIPTION_LABEL).font = Font(bold=True)
    ws.cell(8, 2, neutralise_cell(form.description))
    ws.merge_cells("B8:D8")
    ws.row_dimensions[8].height = 260
    ws.cell(9, 1, "附件").font = Font(bold=True)
    ws.cell(9, 2, ATTACHMENT_LINE)
    ws.merge_cells("B9:D9")
    ws.row_dimensions[9].height = 28
    ws.cell(10, 1, neutralise_cell(_form_note(report, form)))
    ws.merge_cells("A10:D10")
    ws.row_dimensions[10].height = 48
    for r in range(2, 11):
        for c in range(1, 5):
            cell = ws.cell(r, c)
            cell.border = box
            cell.alignment = left if (r >= 7 and c >= 2) or r in (2, 10) else wrap
    _page(ws, portrait=True)
    ws.print_area = "A1:D10"


def _page(ws: Any, *, portrait: bool) -> None:
    ws.page_setup.orientation = "portrait" if portrait else "landscape"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 1 if portrait else 0
    ws.print_options.horizontalCentered = True


def _table_sheet(
    wb: Any, title: str, caption: str, header: list[str], rows: list[list[Any]]
) -> Any:
    """A bordered table under a centred caption, columns wide enough for their text."""
    from openpyxl.styles import Alignment, Border, Font, Side
    from openpyxl.utils import get_column_letter

    ws = wb.create_sheet(title)
    thin = Side(style="thin")
    box = Border(left=thin, right=thin, top=thin, bottom=thin)
    ws.append([neutralise_cell(caption)])
    ws["A1"].font = Font(bold=True, size=14)
    ws["A1"].alignment = Alignment(horizontal="center")
    ws.merge_cells(start_row=1, start_column=1, end_row=1, end_column=max(1, len(header)))
    ws.append(_safe(header))
    for r in rows:
        ws.append(_safe(r))
    for col in range(1, len(header) + 1):
        texts = [str(header[col - 1])] + [
            "" if r[col - 1] is None else str(r[col - 1]) for r in rows if col - 1 < len(r)
        ]
        # CJK characters take two columns' width; cap wide text columns and wrap them.
        width = max(_display_width(t) for t in texts) + 2
        ws.column_dimensions[get_column_letter(col)].width = min(max(width, 8), 40)
    for r_cells in ws.iter_rows(min_row=2, max_row=2 + len(rows), max_col=len(header)):
        for cell in r_cells:
            cell.border = box
            cell.alignment = Alignment(wrap_text=True, vertical="center")
    for cell in ws[2]:
        cell.font = Font(bold=True)
    _page(ws, portrait=False)
    return ws


def _display_width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)


def _write_xlsx(report: MonthlyReport, out: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.chart import BarChart, LineChart, Reference

    wb = Workbook()
    wb.remove(wb.active)
    month_cn = _month_cn(report.month)
    if report.total_form is not None and len(report.forms) > 1:
        _form_sheet(wb, report.unit[:31], report, _named(report.total_form, report.unit))
    for f in report.forms:
        _form_sheet(wb, f.unit[:31], report, f)
    _table_sheet(
        wb,
        "汇总",
        f"{TITLE}汇总（{month_cn}）填报单位：{report.unit}",
        FORM_HEADER,
        [*report.form, report.total] if len(report.forms) > 1 else report.form,
    )
    _table_sheet(
        wb, "配额完成情况", f"配额完成情况与排名（{month_cn}）", QUOTA_HEADER, quota_rows(report)
    )
    if len(report.forms) > 1:
        header, rows = _delivery_rows(report)
        d = _table_sheet(
            wb, "分运营商发送", f"分运营商发送（{month_cn}，按发送日计）", header, rows
        )
        d.append([])
        d.append(["失败原因（错误码）", "条数", "含义"])
        for e in report.delivery.get("top_errors", []):
            d.append(_safe([e["code"], e["count"], e["meaning"]]))
    _table_sheet(
        wb, "发案倒查", f"发案倒查（{month_cn}）", _checkback_header(report), report.checkback
    )
    header, rows = _weekly_tables(report)
    w = _table_sheet(wb, "每周发送", f"各乡镇每周短信发送与目标（{month_cn}）", header, rows)
    if rows and report.weeks:
        # Attainment per week (bars) against the target line at 100%.
        base = len(rows) + 5
        w.cell(base, 1, "完成率(%)")
        for i, wk in enumerate(report.weeks):
            w.cell(base, 2 + i, wk.label)
        w.cell(base, 2 + len(report.weeks), "目标线")
        for j, row in enumerate(rows):
            w.cell(base + 1 + j, 1, row[0])
            for i in range(len(report.weeks)):
                w.cell(base + 1 + j, 2 + i, row[3 + 3 * i] or 0)
            w.cell(base + 1 + j, 2 + len(report.weeks), 100)
        bars = BarChart()
        bars.type = "col"
        bars.title = f"{month_cn}各乡镇每周完成率与目标线"
        bars.y_axis.title = "完成率(%)"
        n = len(report.weeks)
        data = Reference(w, min_col=2, max_col=1 + n, min_row=base, max_row=base + len(rows))
        cats = Reference(w, min_col=1, min_row=base + 1, max_row=base + len(rows))
        bars.add_data(data, titles_from_data=True)
        bars.set_categories(cats)
        line = LineChart()
        target = Reference(w, min_col=2 + n, max_col=2 + n, min_row=base, max_row=base + len(rows))
        line.add_data(target, titles_from_data=True)
        bars += line
        bars.width, bars.height = 24, 10
        w.add_chart(bars, f"A{base + len(rows) + 2}")
    wb.save(out)


def _named(form: UnitForm, unit: str) -> UnitForm:
    return UnitForm(
        unit,
        form.counts,
        form.other,
        form.description,
        form.sms_own,
        form.sms_reported,
        form.sms_delivered,
    )


def _write_csv(report: MonthlyReport, out: Path) -> None:
    with out.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"{TITLE}（{report.month}）", f"填报单位：{report.unit}"])
        writer.writerow(FORM_HEADER)
        for row in report.form:
            writer.writerow(_safe(row))
        if len(report.forms) > 1:
            writer.writerow(_safe(report.total))


def _markdown(report: MonthlyReport) -> str:
    def table(header: list[Any], rows: list[list[Any]]) -> str:
        lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        lines += [
            "| " + " | ".join("" if x is None else str(x).replace("|", "/") for x in r) + " |"
            for r in rows
        ]
        return "\n".join(lines)

    header, rows = _delivery_rows(report)
    w_header, w_rows = _weekly_tables(report)
    parts = [
        f"# {TITLE}（{report.month}）",
        f"填报单位：{report.unit}",
        table(FORM_HEADER, [*report.form, report.total]),
        "## 配额完成情况（排名、晾晒）",
        table(QUOTA_HEADER, quota_rows(report)),
        "## 分运营商发送",
        table(header, rows),
        "## 发案倒查",
        table(_checkback_header(report), report.checkback) if report.checkback else "本月无案件。",
        "## 每周发送",
        table(w_header, w_rows),
    ]
    return "\n\n".join(parts) + "\n"


# -- PDF -------------------------------------------------------------------------------------

PDF_CSS = """
@page { size: A4 portrait; margin: 16mm 14mm; }
@page wide { size: A4 landscape; margin: 12mm 10mm; }
body { font-family: "Noto Sans CJK SC", "Noto Serif CJK SC", sans-serif; font-size: 10.5pt; }
h1 { text-align: center; font-size: 20pt; margin: 0 0 6mm; }
h2 { font-size: 13pt; margin: 0 0 3mm; }
section { break-after: page; }
section.wide { page: wide; }
section:last-child { break-after: auto; }
table { border-collapse: collapse; width: 100%; }
td, th { border: 0.6pt solid #000; padding: 1.6mm; vertical-align: middle; }
th { font-weight: bold; background: #f2f2f2; }
.form th { text-align: center; width: 25%; }
.form td.n { text-align: center; height: 9mm; font-size: 12pt; }
.form td.text { height: 110mm; vertical-align: top; white-space: pre-wrap; }
.unit { display: flex; justify-content: space-between; margin-bottom: 2mm; }
.small td, .small th { font-size: 8pt; padding: 1mm; }
.num { text-align: right; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _html_table(header: list[str], rows: list[list[Any]], cls: str = "small") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(v)}</td>'
            if isinstance(v, int | float)
            else f"<td>{_esc(v)}</td>"
            for v in r
        )
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_form(report: MonthlyReport, form: UnitForm) -> str:
    rows = []
    for fields in FORM_ROWS:
        rows.append("<tr>" + "".join(f"<th>{_esc(FIELD_LABELS[k])}</th>" for k in fields) + "</tr>")
        rows.append(
            "<tr>" + "".join(f'<td class="n">{form.counts[k]}</td>' for k in fields) + "</tr>"
        )
    rows.append(f'<tr><th>{OTHER_LABEL}</th><td colspan="3">{_esc(form.other)}</td></tr>')
    rows.append(
        f"<tr><th>{DESCRIPTION_LABEL}</th>"
        f'<td colspan="3" class="text">{_esc(form.description)}</td></tr>'
    )
    rows.append(f'<tr><th>附件</th><td colspan="3">{ATTACHMENT_LINE}</td></tr>')
    rows.append(f'<tr><td colspan="4">{_esc(_form_note(report, form))}</td></tr>')
    return (
        f"<section><h1>{TITLE}</h1>"
        f'<div class="unit"><span>填报单位（乡镇街道、部门单位）：{_esc(form.unit)}</span>'
        f"<span>月份：{_month_cn(report.month)}</span></div>"
        f'<table class="form">{"".join(rows)}</table></section>'
    )


def _svg_chart(report: MonthlyReport) -> str:
    """Weekly attainment bars per town against the 100% target line, as inline SVG."""
    _header, rows = _weekly_tables(report)
    if not rows or not report.weeks:
        return ""
    n = len(report.weeks)
    width, height, pad = 1000, 300, 40
    top = max([100.0] + [float(r[3 + 3 * i] or 0) for r in rows for i in range(n)])
    group_w = (width - 2 * pad) / len(rows)
    bar_w = group_w * 0.8 / n
    colours = ["#4472c4", "#ed7d31", "#a5a5a5", "#ffc000", "#5b9bd5", "#70ad47"]

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {height}">'
    ]
    for j, r in enumerate(rows):
        x0 = pad + j * group_w + group_w * 0.1
        for i in range(n):
            v = float(r[3 + 3 * i] or 0)
            parts.append(
                f'<rect x="{x0 + i * bar_w:.1f}" y="{y(v):.1f}" width="{bar_w:.1f}" '
                f'height="{height - pad - y(v):.1f}" fill="{colours[i % len(colours)]}"/>'
            )
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - pad + 14}" font-size="11" '
            f'text-anchor="middle">{_esc(r[0])}</text>'
        )
    parts.append(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(100):.1f}" y2="{y(100):.1f}" '
        'stroke="#c00000" stroke-width="2" stroke-dasharray="6,4"/>'
    )
    parts.append(
        f'<text x="{width - pad}" y="{y(100) - 4:.1f}" font-size="11" '
        'text-anchor="end" fill="#c00000">目标线 100%</text>'
    )
    for i, w in enumerate(report.weeks):
        parts.append(
            f'<rect x="{pad + i * 90}" y="4" width="10" height="10" '
            f'fill="{colours[i % len(colours)]}"/><text x="{pad + i * 90 + 14}" y="13" '
            f'font-size="11">{w.label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def report_html(report: MonthlyReport) -> str:
    """The whole report as one HTML document: forms on A4 portrait, tables on landscape."""
    month_cn = _month_cn(report.month)
    sections = []
    if report.total_form is not None and len(report.forms) > 1:
        sections.append(_html_form(report, _named(report.total_form, report.unit)))
    sections += [_html_form(report, f) for f in report.forms]
    summary = [*report.form, report.total] if len(report.forms) > 1 else report.form
    sections.append(
        f'<section class="wide"><h2>{TITLE}汇总（{month_cn}）填报单位：{_esc(report.unit)}</h2>'
        + _html_table(FORM_HEADER, summary)
        + "</section>"
    )
    sections.append(
        f'<section class="wide"><h2>配额完成情况与排名（{month_cn}）</h2>'
        + _html_table(QUOTA_HEADER, quota_rows(report))
        + "</section>"
    )
    if len(report.forms) > 1:
        header, rows = _delivery_rows(report)
        sections.append(
            f'<section class="wide"><h2>分运营商发送（{month_cn}，按发送日计）</h2>'
            + _html_table(header, rows)
            + "</section>"
        )
    sections.append(
        f'<section class="wide"><h2>发案倒查（{month_cn}）</h2>'
        + (
            _html_table(_checkback_header(report), report.checkback)
            if report.checkback
            else "<p>本月无案件。</p>"
        )
        + "</section>"
    )
    w_header, w_rows = _weekly_tables(report)
    sections.append(
        f'<section class="wide"><h2>各乡镇每周短信发送与目标（{month_cn}）</h2>'
        + _html_table(w_header, w_rows)
        + _svg_chart(report)
        + "</section>"
    )
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{TITLE}（{month_cn}）</title><style>{PDF_CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>"
    )


def write_pdf(document: str, out: Path) -> Path:
    """HTML → PDF through WeasyPrint (Pango lays out the CJK text with the Noto CJK fonts)."""
    try:
        from weasyprint import HTML
    except OSError as exc:  # pango missing: name the Debian packages
        raise PingAnError(
            f"PDF needs Pango (Debian: libpango-1.0-0 libpangoft2-1.0-0): {exc}"
        ) from exc
    HTML(string=document).write_pdf(out)
    return out


# -- the due-day job -------------------------------------------------------------------------


def report_path(core: Core, month: str) -> Path:
    return core.settings.effective_reports_dir / f"月报-{month}.xlsx"


def write_due_report(core: Core, today: dt.date) -> Path | None:
    """On the due day (PINGAN_REPORT_DUE_DAY), write the report of the month
    PINGAN_REPORT_PERIOD names (this one, or the one before) once."""
    settings = core.settings
    if today.day != settings.report_due_day:
        return None
    month = report_month(today, settings.report_period)
    path = report_path(core, month)
    if path.exists():
        return None
    write_report(build_monthly_report(core, month), path)
    log.info(
        "report.written",
        month=month,
        path=str(path),
        period=settings.report_period,
        day=today.isoformat(),
    )
    return path
