"""Template use cases: list, preview, lint, and approve what an operator reviewed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import PingAnError, TemplateError
from scheduler.templating import LintProblem


@dataclass(frozen=True)
class Approval:
    name: str
    source_hash: str
    by: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.source_hash, "by": self.by}


def approve_template(core: Core, name: str, by: str) -> Approval:
    """Record approval of the template's current content (its sha256) in approvals.yaml;
    refused (TemplateError) while it does not lint clean."""
    cat = core.catalogue
    cat.approve(name, by)
    return Approval(name, cat.get(name).source_hash, by)


def _pools_used(core: Core) -> list[str]:
    try:
        return [camp.pool for camp in core.campaigns.all if camp.pool]
    except PingAnError:  # a broken campaigns.yaml is check's to report, not lint's
        return []


@dataclass(frozen=True)
class TemplateInfo:
    """A template as `templates list` shows it: its length is that of the sample render."""

    name: str
    channel: str
    theme: str | None
    audience: tuple[str, ...]
    pool: str | None
    chars: int | None
    segments: int | None
    modified_at: str
    approval: str  # approved, changed, never
    hash: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "audience": list(self.audience)}


def list_templates(core: Core) -> list[TemplateInfo]:
    """Every template: channel, audience, length for the sample district, approval state."""
    cat = core.catalogue
    rows: list[TemplateInfo] = []
    for name in cat.names():
        info = cat.get(name)
        chars: int | None = None
        segments: int | None = None
        error = None
        try:
            rendered = cat.render(name, cat.sample_context(info))
            chars, segments = rendered.chars, rendered.segments
        except TemplateError as exc:
            error = str(exc)
        rows.append(
            TemplateInfo(
                name=name,
                channel=info.channel,
                theme=info.theme,
                audience=tuple(info.audience),
                pool=info.pool,
                chars=chars,
                segments=segments if info.channel == "sms" else None,
                modified_at=info.modified_at.astimezone(core.settings.tz).isoformat(
                    timespec="seconds"
                ),
                approval=cat.approval_state(name),
                hash=info.source_hash,
                error=error,
            )
        )
    return rows


@dataclass(frozen=True)
class Preview:
    name: str
    channel: str
    town: str
    village: str | None
    text: str
    chars: int
    segments: int
    encoding: str
    template_hash: str
    approval: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview_template(
    core: Core,
    name: str,
    *,
    town: str | None = None,
    village: str | None = None,
    segment: str | None = None,
) -> Preview:
    """The text exactly as a phone shows it, for a town (default the first), a village and a
    segment, on today's date in the district (the core's clock)."""
    cat = core.catalogue
    info = cat.get(name)
    district = core.district
    town_obj = district.find_town(town) if town else district.towns[0]
    village_obj = (
        district.find_village(town_obj, village)
        if village
        else (town_obj.villages[0] if town_obj.villages else None)
    )
    sample = cat.sample_context(info)
    ctx_vars = cat.context(
        town=town_obj,
        village=village_obj if info.channel == "sms" else None,
        recipient={"name": "张三", "segments": [segment] if segment else []}
        if info.channel == "sms"
        else None,
        extra={k: sample[k] for k in ("fraud_type", "amount_band", "case_date") if k in sample},
        today=core.clock().astimezone(core.settings.tz).date(),
    )
    rendered = cat.render(name, ctx_vars)
    return Preview(
        name=name,
        channel=info.channel,
        town=town_obj.id,
        village=village_obj.id if village_obj else None,
        text=rendered.text,
        chars=rendered.chars,
        segments=rendered.segments,
        encoding=rendered.encoding,
        template_hash=rendered.template_hash,
        approval=cat.approval_state(name),
    )


def lint_templates(core: Core, names: list[str] | None = None) -> list[LintProblem]:
    """Syntax, variables, signature, opt-out, length, audience, pools: each problem with its
    file and line."""
    return core.catalogue.lint(names or None, pools_used=_pools_used(core))
