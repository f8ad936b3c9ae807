"""The console's use cases: what each page reads and changes, each written once here.

Pages (scheduler/console/) parse the request, call one of these and render the result; they
never touch the store. Every change takes the acting user and the peer address and writes the
audit log. Town-scoped users are limited here too (`town` arguments), not only in the pages.
"""

from __future__ import annotations

import datetime as dt
import difflib
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import accounts, activities, cases, quotas, reports
from scheduler.accounts import Account
from scheduler.core import Core
from scheduler.delivery_stats import delivery_stats
from scheduler.exceptions import InvalidPhoneNumber, PingAnError, TemplateError
from scheduler.expansion import ExpansionResult
from scheduler.models import Occurrence, OccurrenceState
from scheduler.phones import mask, normalize
from scheduler.recipients import ImportSummary, import_recipients_file, rejects_path
from scheduler.store import console as store
from scheduler.store import outbox
from scheduler.store import recipients as recipient_store
from scheduler.store.quotas import counter_days, sum_counters
from scheduler.store.users import AuditRecord
from scheduler.templating import Catalogue


class ConsoleError(PingAnError):
    """A request the console refuses, with the reason in Chinese for the page."""


class NotYourTown(ConsoleError):
    """A town user asked about another town."""


def _audit(core: Core, who: Account, action: str, subject: str, detail: str, peer: str) -> None:
    accounts.record_audit(core, who.name, action, subject, detail, peer=peer)


def _record(
    core: Core, who: Account, action: str, subject: str, detail: str, peer: str
) -> AuditRecord:
    """An audit row to write in the same transaction as the change it records."""
    return AuditRecord(core.clock(), who.name, action, subject, detail, peer)


def _today(core: Core) -> dt.date:
    return core.clock().astimezone(core.settings.tz).date()


def town_name(core: Core, town_id: str) -> str:
    town = core.district.towns_by_id.get(town_id)
    return town.name if town else town_id


def _check_town(who: Account, town_id: str | None) -> None:
    if who.town_id is not None and town_id != who.town_id:
        raise NotYourTown(f"您的账号只能查看和操作{who.town_name or who.town_id}的数据。")


# --------------------------------------------------------------------------- 总览 (dashboard)


@dataclass(frozen=True)
class Today:
    """Today's sending: the counters' sent and delivered, messages waiting and failed."""

    day: dt.date
    pending: int
    sent: int
    delivered: int
    failed: int


@dataclass(frozen=True)
class Firing:
    campaign: str
    channel: str
    at: dt.datetime


@dataclass(frozen=True)
class Alert:
    kind: str  # failed_occurrence | provider_error | must_reach
    text: str


@dataclass
class Dashboard:
    day: dt.date
    statuses: list[quotas.RuleStatus]
    today: Today
    firings: list[Firing]
    alerts: list[Alert]
    town: str | None = None

    def by_kind(self, window: str) -> list[quotas.RuleStatus]:
        return [s for s in self.statuses if s.rule.window == window]


def quota_status(
    core: Core, *, day: dt.date | None = None, label: str | None = None, bottom: int = 0
) -> list[quotas.RuleStatus]:
    """Exactly what `pingan quota status [--on DAY | --week/--month LABEL]` judges (the same
    `quotas.select_windows` and `quotas.status`), so page and CLI cannot disagree."""
    tz = core.settings.tz
    now = core.clock()
    rules = quotas.load_rules(core.settings.config_dir, core.district)
    if label is None and day is None:
        day = now.astimezone(tz).date()
    pairs = quotas.select_windows(rules, day=day, label=label)

    def judge(pair: tuple[quotas.QuotaRule, quotas.Window]) -> list[quotas.RuleStatus]:
        return quotas.status(core.engine, [pair], core.district, now=now, tz=tz, bottom=bottom)

    if len(pairs) < 2:
        return judge(pairs[0]) if pairs else []
    # Each window is judged on its own (status() is a list of independent judgements), so the
    # counter sums of several rules run at once: the database works while Python waits.
    with ThreadPoolExecutor(max_workers=min(4, len(pairs)), thread_name_prefix="quota") as pool:
        return [st for done in pool.map(judge, pairs) for st in done]


def _only_town(st: quotas.RuleStatus, town_id: str) -> quotas.RuleStatus:
    if st.rule.subject == "carrier":
        return st
    rows = tuple(r for r in st.rows if r.subject.town_id == town_id)
    return quotas.RuleStatus(st.rule, st.window, rows, open=st.open)


def today_sending(core: Core, *, town: str | None = None) -> Today:
    tz = core.settings.tz
    day = _today(core)
    sums = sum_counters(
        core.engine, first_day=day, last_day=day, by="town", towns=[town] if town else None
    )
    sent = sum(v[0] for v in sums.values())
    delivered = sum(v[1] for v in sums.values())
    start = quotas.local_midnight(day, tz)
    return Today(
        day=day,
        pending=store.pending_count(core.engine, town_id=town),
        sent=sent,
        delivered=delivered,
        failed=store.failed_since(core.engine, start, town_id=town),
    )


def next_firings(core: Core, count: int = 8) -> list[Firing]:
    """The next two firings of each scheduled campaign (as `pingan campaigns list` shows
    them), soonest first; from the campaigns' triggers, without building a planner."""
    now = core.clock()
    tz = core.settings.tz
    out = []
    for c in core.campaigns.all:
        for i, t in enumerate(c.fire_times(tz, now, now + dt.timedelta(days=400))):
            out.append(Firing(c.name, c.channel, t))
            if i == 1:
                break
    return sorted(out, key=lambda f: f.at)[:count]


def alerts(core: Core, *, town: str | None = None, since_days: int = 14) -> list[Alert]:
    tz = core.settings.tz
    out: list[Alert] = []
    for occ in store.failed_occurrences(core.engine, limit=10):
        if town and (occ.target or {}).get("town") not in (None, town):
            continue
        when = occ.scheduled_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
        out.append(
            Alert(
                "failed_occurrence",
                f"发送批次 #{occ.id}（{occ.campaign}，{when}）执行失败："
                f"{occ.error or '原因未记录'}",
            )
        )
        if occ.kind == "alert":
            target = occ.target or {}
            out.append(Alert("must_reach", _must_reach_text(core, occ, target)))
    for occ in outbox.list_occurrences(core.engine, limit=50):
        if occ.kind != "alert" or occ.state == OccurrenceState.FAILED:
            continue
        target = occ.target or {}
        if town and target.get("town") != town:
            continue
        if occ.scheduled_at < core.clock() - dt.timedelta(days=since_days):
            continue
        out.append(Alert("must_reach", _must_reach_text(core, occ, target)))
    start = quotas.local_midnight(_today(core), core.settings.tz)
    failed = store.failed_since(core.engine, start, town_id=town)
    if failed:
        text = f"今日有 {failed} 条短信发送失败，错误码及含义见“投递”页。"
        out.append(Alert("provider_error", text))
    return out


def _must_reach_text(core: Core, occ: Occurrence, target: dict[str, Any]) -> str:
    tz = core.settings.tz
    town_id = str(target.get("town", ""))
    village_id = str(target.get("village", ""))
    village = village_id
    t = core.district.towns_by_id.get(town_id)
    if t is not None:
        village = next((v.name for v in t.villages if v.id == village_id), village_id)
    rule = {"single_loss": "单笔损失达标", "case_count": "案件数达标"}.get(
        str(target.get("rule", "")), str(target.get("rule", ""))
    )
    when = occ.scheduled_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    return (
        f"三必讲：{town_name(core, town_id)}{village}（{rule}），"
        f"提醒短信 {when} 发送，排队 {occ.queued} 人"
    )


def dashboard(core: Core, who: Account, *, day: dt.date | None = None) -> Dashboard:
    """The 总览: every rule's window containing `day` (this week, this month, cumulative),
    today's sending from the counters, the next firings and the alerts."""
    day = day or _today(core)
    statuses = quota_status(core, day=day)
    if who.town_id:
        statuses = [_only_town(s, who.town_id) for s in statuses]
        statuses = [s for s in statuses if s.rows]
    return Dashboard(
        day=day,
        statuses=statuses,
        today=today_sending(core, town=who.town_id),
        firings=next_firings(core),
        alerts=alerts(core, town=who.town_id),
        town=who.town_id,
    )


# --------------------------------------------------------------------------- 发送批次


@dataclass(frozen=True)
class OccurrenceView:
    occ: Occurrence
    counts: dict[str, int]
    town: str | None  # the one town it targets, if any

    @property
    def queued(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("sending", 0)

    @property
    def sent(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("sent", "delivered", "undelivered"))

    @property
    def delivered(self) -> int:
        return self.counts.get("delivered", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0) + self.counts.get("undelivered", 0)


def list_occurrences(
    core: Core, who: Account, *, campaign: str | None = None, limit: int = 100
) -> list[OccurrenceView]:
    occs = outbox.list_occurrences(core.engine, campaign=campaign, limit=limit)
    counts = store.occurrence_state_counts(core.engine, [o.id for o in occs], town_id=who.town_id)
    out = []
    for o in occs:
        town = (o.target or {}).get("town")
        if who.town_id and town not in (None, who.town_id):
            continue
        out.append(OccurrenceView(o, counts.get(o.id, {}), town if isinstance(town, str) else None))
    return out


def _occurrence_for_change(core: Core, who: Account, occurrence_id: int) -> Occurrence:
    occ = outbox.get_occurrence(core.engine, occurrence_id)
    if occ is None:
        raise ConsoleError(f"没有编号为 {occurrence_id} 的发送批次。")
    town = (occ.target or {}).get("town")
    if who.town_id is not None and town != who.town_id:
        raise NotYourTown("镇（街道）账号只能操作本镇的发送批次，全区批次请联系区平安办。")
    return occ


def set_paused(core: Core, who: Account, occurrence_id: int, paused: bool, *, peer: str) -> None:
    occ = _occurrence_for_change(core, who, occurrence_id)
    action = "occurrence.pause" if paused else "occurrence.resume"
    audit = _record(core, who, action, f"#{occurrence_id}", occ.campaign, peer)
    if not store.set_paused(core.engine, occurrence_id, paused, audit):
        raise ConsoleError(f"没有编号为 {occurrence_id} 的发送批次。")


def retry_occurrence(core: Core, who: Account, occurrence_id: int, *, peer: str) -> ExpansionResult:
    occ = _occurrence_for_change(core, who, occurrence_id)
    if occ.state != OccurrenceState.FAILED:
        raise ConsoleError(f"发送批次 #{occurrence_id} 当前不是“失败”状态，不能重试。")
    result = core.planner().retry(occurrence_id)
    _audit(
        core,
        who,
        "occurrence.retry",
        f"#{occurrence_id}",
        f"{occ.campaign}：结果 {result.state}，排队 {result.queued}",
        peer,
    )
    return result


# --------------------------------------------------------------------------- 模板


@dataclass(frozen=True)
class TemplateRow:
    name: str
    channel: str
    theme: str
    audience: tuple[str, ...]
    approval: str
    chars: int | None
    segments: int | None
    error: str | None


def list_templates(core: Core) -> list[TemplateRow]:
    cat = core.catalogue
    rows = []
    for name in cat.names():
        info = cat.get(name)
        chars = segments = None
        error = None
        try:
            r = cat.render(name, cat.sample_context(info))
            chars, segments = r.chars, (r.segments if info.channel == "sms" else None)
        except TemplateError as exc:
            error = str(exc)
        rows.append(
            TemplateRow(
                name,
                info.channel,
                info.theme,
                info.audience,
                cat.approval_state(name),
                chars,
                segments,
                error,
            )
        )
    return rows


@dataclass(frozen=True)
class Preview:
    name: str
    channel: str
    text: str
    chars: int
    segments: int
    encoding: str
    town: str
    village: str | None
    segment: str | None


def preview(
    core: Core,
    name: str,
    *,
    town: str | None = None,
    segment: str | None = None,
    catalogue: Catalogue | None = None,
) -> Preview:
    """The text as a phone shows it (or the letter as it prints), counted as carriers bill it:
    the same context as `pingan templates preview`."""
    cat = catalogue or core.catalogue
    info = cat.get(name)
    district = core.district
    town_obj = district.find_town(town) if town else district.towns[0]
    village_obj = town_obj.villages[0] if town_obj.villages else None
    sample = cat.sample_context(info)
    ctx = cat.context(
        town=town_obj,
        village=village_obj if info.channel == "sms" else None,
        recipient={"name": "张三", "segments": [segment] if segment else []}
        if info.channel == "sms"
        else None,
        extra={k: sample[k] for k in ("fraud_type", "amount_band", "case_date") if k in sample},
        today=_today(core),
    )
    r = cat.render(name, ctx)
    return Preview(
        name,
        info.channel,
        r.text,
        r.chars,
        r.segments,
        r.encoding,
        town_obj.id,
        village_obj.id if village_obj else None,
        segment,
    )


@dataclass
class TemplateDetail:
    name: str
    channel: str
    theme: str
    audience: tuple[str, ...]
    approval: str
    approved_by: str | None
    approved_at: str | None
    content: str
    approved_content: str | None
    diff: list[str]
    revisions: list[store.Revision] = field(default_factory=list)


def template_detail(core: Core, name: str) -> TemplateDetail:
    cat = core.catalogue
    info = cat.get(name)
    content = info.path.read_text(encoding="utf-8")
    record = cat.approvals().get(name) or {}
    approved_hash = record.get("hash")
    approved = (
        store.revision_with_hash(core.engine, name, str(approved_hash)) if approved_hash else None
    )
    approved_content = approved.content if approved else None
    if approved_content is None and approved_hash == info.source_hash:
        approved_content = content
    diff: list[str] = []
    if approved_content is not None and approved_content != content:
        diff = list(
            difflib.unified_diff(
                approved_content.splitlines(),
                content.splitlines(),
                "已审核版本",
                "当前版本",
                lineterm="",
            )
        )
    return TemplateDetail(
        name=name,
        channel=info.channel,
        theme=info.theme,
        audience=info.audience,
        approval=cat.approval_state(name),
        approved_by=record.get("approved_by"),
        approved_at=str(record["approved_at"]) if record.get("approved_at") else None,
        content=content,
        approved_content=approved_content,
        diff=diff,
        revisions=store.revisions(core.engine, name),
    )


def _keep_current(core: Core, name: str, author: str) -> None:
    """The text on disk as a revision, if the table does not have it yet (a file edited on the
    server, or approved from the CLI), so the approved text can always be diffed against."""
    info = core.catalogue.get(name)
    if store.revision_with_hash(core.engine, name, info.source_hash) is None:
        store.add_revision(
            core.engine,
            name=name,
            source_hash=info.source_hash,
            content=info.path.read_text(encoding="utf-8"),
            author=author,
            at=core.clock(),
        )


def save_template(core: Core, who: Account, name: str, content: str, *, peer: str) -> list[str]:
    """Lint the new text in a scratch copy of the templates folder; only when it passes is
    the file replaced (atomically) and the revision kept. Returns the problems (empty: saved)."""
    if who.town_id is not None:
        raise NotYourTown("模板由区平安办统一编辑，镇（街道）账号不能修改。")
    cat = core.catalogue
    info = cat.get(name)
    content = content.replace("\r\n", "\n")
    if not content.endswith("\n"):
        content += "\n"
    with tempfile.TemporaryDirectory(prefix="pingan-lint-") as scratch:
        folder = Path(scratch) / "messages"
        shutil.copytree(cat.dir, folder)
        (folder / info.path.name).write_text(content, encoding="utf-8")
        trial = Catalogue(folder, core.district, max_segments=core.settings.max_sms_segments)
        pools = [c.pool for c in core.campaigns.all if c.pool]
        problems = trial.lint([name], pools_used=pools)
    if problems:
        return [f"第{p.line}行：{p.reason}" for p in problems]
    _keep_current(core, name, "（保存前的文件）")
    tmp = info.path.with_suffix(info.path.suffix + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(info.path)
    new = cat.get(name)
    store.add_revision(
        core.engine,
        name=name,
        source_hash=new.source_hash,
        content=content,
        author=who.name,
        at=core.clock(),
        audit=_record(core, who, "template.edit", name, f"新版本 {new.source_hash[:12]}", peer),
    )
    return []


def preview_text(core: Core, name: str, content: str, *, town: str | None = None) -> Preview:
    """A preview of unsaved text (the editor's live count), in a scratch folder."""
    cat = core.catalogue
    info = cat.get(name)
    with tempfile.TemporaryDirectory(prefix="pingan-preview-") as scratch:
        folder = Path(scratch) / "messages"
        folder.mkdir()
        (folder / info.path.name).write_text(content.replace("\r\n", "\n"), encoding="utf-8")
        trial = Catalogue(folder, core.district, max_segments=core.settings.max_sms_segments)
        return preview(core, name, town=town, catalogue=trial)


def approve_template(core: Core, who: Account, name: str, *, peer: str) -> str:
    """Record approval in approvals.yaml as `pingan templates approve` does; returns the hash."""
    if who.town_id is not None:
        raise NotYourTown("模板由区平安办审核，镇（街道）账号不能审核。")
    cat = core.catalogue
    cat.approve(name, who.name, now=core.clock())
    info = cat.get(name)
    _keep_current(core, name, who.name)
    _audit(core, who, "template.approve", name, f"审核通过 {info.source_hash[:12]}", peer)
    return info.source_hash


# --------------------------------------------------------------------------- 居民名单


def recipient_counts(core: Core, who: Account) -> dict[str, Any]:
    stats = recipient_store.stats(core.engine)
    if who.town_id:
        t = who.town_id
        stats["by_town"] = {k: v for k, v in stats["by_town"].items() if k == t}
        stats["by_village"] = {
            k: v for k, v in stats["by_village"].items() if k.split("/", 1)[0] == t
        }
        stats["total"] = sum(stats["by_town"].values())
    return stats


def import_recipients(
    core: Core,
    who: Account,
    path: Path,
    *,
    peer: str,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import an uploaded CSV (kept in the data dir so its rejects file can be downloaded)."""
    if who.town_id is not None:
        raise NotYourTown("居民名单由区平安办统一导入，镇（街道）账号不能上传。")
    summary = import_recipients_file(core.engine, core.district, path, on_progress=on_progress)
    _audit(
        core,
        who,
        "recipients.import",
        path.name,
        f"共 {summary.rows} 行，新增 {summary.imported}，更新 {summary.updated}，"
        f"拒收 {summary.rejected}",
        peer,
    )
    return summary


def uploads_dir(core: Core) -> Path:
    folder = Path(core.settings.data_dir) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rejects_file(core: Core, upload_name: str) -> Path | None:
    """The rejects file of an upload made through the console (names are ours, never paths)."""
    if "/" in upload_name or "\\" in upload_name or upload_name.startswith("."):
        return None
    path = rejects_path(uploads_dir(core) / upload_name)
    return path if path.is_file() else None


def opt_out(core: Core, who: Account, phone: str, reason: str, *, peer: str) -> tuple[str, int]:
    """Record one refusal; returns (masked number, queued messages cancelled)."""
    try:
        number = normalize(phone)
    except InvalidPhoneNumber as exc:
        raise ConsoleError(f"号码无效：{exc}") from None
    _new, cancelled = store.opt_out(
        core.engine,
        number,
        reason=reason or None,
        now=core.clock(),
        audit=_record(core, who, "recipients.opt_out", mask(number), reason, peer),
    )
    return mask(number), cancelled


# --------------------------------------------------------------------------- 案件


def monthly_report(core: Core, who: Account, month: str, town: str | None = None) -> Any:
    if who.town_id:
        town = who.town_id
    return reports.build_monthly_report(core, month, town)


def import_cases(core: Core, who: Account, path: Path, *, peer: str) -> cases.CaseImport:
    result = cases.import_cases(core, path)
    _audit(
        core,
        who,
        "cases.import",
        path.name,
        f"读取 {result.read}，新增 {result.inserted}，拒收 {len(result.rejected)}，"
        f"三必讲提醒 {len(result.alerts)}",
        peer,
    )
    return result


def add_case(core: Core, who: Account, row: dict[str, str], *, peer: str) -> cases.CaseImport:
    try:
        parsed = cases.parse_case(core, row, core.settings.tz)
    except ValueError as exc:
        raise ConsoleError(f"案件信息有误：{exc}") from None
    _check_town(who, parsed["town_id"])
    result = cases.record_cases(core, [parsed])
    _audit(
        core,
        who,
        "cases.add",
        parsed["case_id"],
        f"{town_name(core, parsed['town_id'])}，损失 {parsed['amount_yuan']} 元",
        peer,
    )
    return result


# --------------------------------------------------------------------------- 报表


def report_file(core: Core, who: Account, month: str, town: str | None, suffix: str) -> bytes:
    report = monthly_report(core, who, month, town)
    with tempfile.TemporaryDirectory(prefix="pingan-report-") as folder:
        return reports.write_report(report, Path(folder) / f"report{suffix}").read_bytes()


def activity_values(core: Core, month: str) -> dict[str, dict[str, Any]]:
    from scheduler.store import activities as activity_store

    acts = activity_store.activities_for(core.engine, activities.check_month(month))
    return {t: {k: getattr(a, k) for k, _label in activities.COLUMNS} for t, a in acts.items()}


def save_activities(
    core: Core, who: Account, town: str, month: str, values: dict[str, Any], *, peer: str
) -> None:
    _check_town(who, town)
    from scheduler.store import activities as activity_store

    if activity_store.is_filed(core.engine, month):
        raise ConsoleError(f"{month} 的月报已报送，活动情况不能再修改。")
    try:
        activities.add(core.engine, core.district, town, month, values, now=core.clock())
    except PingAnError as exc:
        raise ConsoleError(f"填写有误：{exc}") from None
    _audit(core, who, "activities.save", f"{town_name(core, town)} {month}", "", peer)


# --------------------------------------------------------------------------- 投递


def delivery(core: Core, who: Account, month: str) -> dict[str, Any]:
    """Delivery by day (counters) and top error codes with their meaning, for one month."""
    stats = delivery_stats(core, month=month, by="day")
    first = dt.date.fromisoformat(month + "-01")
    last = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    if who.town_id:
        days = counter_days(
            core.engine, first_day=first, last_day=last, by="town", towns=[who.town_id]
        ).get((who.town_id,), {})
        stats["rows"] = [
            {"key": d.isoformat(), "sent": s, "delivered": dl, "failed": None}
            for d, (s, dl) in sorted(days.items())
        ]
        stats["top_errors"] = []  # counted for the whole district only
        stats["town_only"] = True
    return stats
