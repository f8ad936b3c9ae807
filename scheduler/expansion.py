"""Expanding an occurrence into the outbox: one queued message per eligible recipient, once.

Recipients stream in id-keyed batches; each template is rendered once per distinct context
(once per town, say) unless it uses a per-recipient variable; each chunk commits together with
the occurrence's cursor, so a killed expansion resumes where it stopped and never duplicates.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.campaigns import Campaign, week_index, week_start
from scheduler.config import District
from scheduler.exceptions import TemplateError, TemplateNotApproved
from scheduler.logs import get_logger
from scheduler.models import Occurrence, OccurrenceState
from scheduler.store import outbox
from scheduler.store.outbox import QueuedMessage, RecipientRow
from scheduler.templating import Catalogue, TemplateInfo

log = get_logger("scheduler.expansion")

# Why a recipient got no message from an occurrence; counted on the occurrence.
OPTED_OUT = "opted_out"
OVER_CAP = "over_cap"
OUTSIDE_AUDIENCE = "outside_audience"
INVALID = "invalid"
ALREADY_REACHED = "already_reached"
OVER_LIMIT = "over_limit"


@dataclass
class ExpansionResult:
    occurrence_id: int
    state: OccurrenceState
    queued: int
    excluded: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False


class Expander:
    """Expands occurrences of one district's campaigns; shared by the service, CLI and simulator."""

    # Told how many recipients each chunk read (a CLI progress bar); None in the service.
    on_progress: Callable[[int], None] | None = None

    def __init__(
        self,
        engine: Any,
        district: District,
        catalogue: Catalogue,
        *,
        tz: Any,
        weekly_cap: int,
        data_dir: Path,
        chunk_size: int = 5000,
        stop: threading.Event | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.district = district
        self.catalogue = catalogue
        self.tz = tz
        self.weekly_cap = weekly_cap
        self.data_dir = data_dir
        self.chunk_size = chunk_size
        self.stop = stop or threading.Event()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._villages = {t.id: frozenset(v.id for v in t.villages) for t in district.towns}

    def expand(self, campaign: Campaign, occ: Occurrence) -> ExpansionResult:
        """Expand (or resume expanding) `occ`; does nothing to one already expanded."""
        bound = log.bind(occurrence_id=occ.id, campaign=occ.campaign)
        if occ.state != OccurrenceState.EXPANDING:
            return ExpansionResult(occ.id, occ.state, occ.queued, dict(occ.excluded), occ.error)
        local_day = occ.scheduled_at.astimezone(self.tz).date()
        try:
            templates = self._templates(campaign, local_day)
        except (TemplateNotApproved, TemplateError) as exc:
            outbox.set_occurrence_state(
                self.engine, occ.id, OccurrenceState.FAILED, error=str(exc), now=self.clock()
            )
            bound.error("occurrence.refused", reason=str(exc))
            return ExpansionResult(occ.id, OccurrenceState.FAILED, 0, error=str(exc))
        if campaign.channel == "letter":
            return self._letters(campaign, occ, templates[""], local_day)
        return self._sms(campaign, occ, templates, local_day)

    def _templates(self, campaign: Campaign, day: dt.date) -> dict[str, TemplateInfo]:
        """Segment → approved template ('' for everyone); refuses unapproved content."""
        if campaign.pool:
            info = self.catalogue.pick_from_pool(campaign.pool, week_index(day))
            return {"": self.catalogue.require_approved(info.name)}
        if campaign.templates_by_segment:
            return {
                seg: self.catalogue.require_approved(name)
                for seg, name in campaign.templates_by_segment.items()
            }
        assert campaign.template
        return {"": self.catalogue.require_approved(campaign.template)}

    def _in_audience(self, campaign: Campaign, occ: Occurrence, r: RecipientRow) -> bool:
        aud = campaign.audience
        target = occ.target or {}
        if target.get("town") and r.town_id != target["town"]:
            return False
        if target.get("village") and r.village_id != target["village"]:
            return False
        if aud.towns and r.town_id not in aud.towns:
            return False
        if aud.villages and f"{r.town_id}/{r.village_id}" not in aud.villages:
            return False
        if aud.carriers and r.carrier not in aud.carriers:
            return False
        if aud.residence and r.residence != aud.residence:
            return False
        return not (aud.segments and not set(aud.segments) & set(r.segments))

    def _sms(
        self,
        campaign: Campaign,
        occ: Occurrence,
        templates: dict[str, TemplateInfo],
        day: dt.date,
    ) -> ExpansionResult:
        bound = log.bind(occurrence_id=occ.id, campaign=occ.campaign)
        week_from = dt.datetime.combine(week_start(day), dt.time(0), self.tz)
        week_to = week_from + dt.timedelta(days=7)
        cap_occurrences = outbox.sms_occurrences_between(
            self.engine, week_from, week_to, exclude=occ.id
        )
        target = occ.target or {}
        limit = target.get("limit")
        topup_window = (
            (dt.datetime.fromisoformat(target["since"]), dt.datetime.fromisoformat(target["until"]))
            if target.get("since")
            else None
        )
        excluded: Counter[str] = Counter(occ.excluded or {})
        queued_so_far = outbox.count_messages(self.engine, occ.id) if occ.cursor else 0
        bodies: dict[tuple[Any, ...], tuple[int, int]] = {}
        extra = target.get("extra") or {}
        # An occurrence aimed at one town or village (a top-up, a local-case alert) reads only
        # its residents; `_in_audience` still checks every row.
        for batch in outbox.iter_recipient_batches(
            self.engine,
            after_id=occ.cursor,
            batch_size=self.chunk_size,
            town_id=target.get("town"),
            village_id=target.get("village"),
        ):
            lo, hi = batch[0].id, batch[-1].id
            counts = outbox.messages_per_recipient(self.engine, cap_occurrences, lo, hi)
            reached = (
                outbox.recipients_messaged(
                    self.engine,
                    town_id=target["town"],
                    start=topup_window[0],
                    end=topup_window[1],
                    lo=lo,
                    hi=hi,
                )
                if topup_window
                else set()
            )
            now = self.clock()
            rows: list[QueuedMessage] = []
            for r in batch:
                reason, info = self._classify(campaign, occ, r, templates, counts, reached)
                if reason is None and limit is not None and queued_so_far + len(rows) >= limit:
                    reason = OVER_LIMIT
                if reason is not None:
                    excluded[reason] += 1
                    continue
                assert info is not None
                body_id, segments = self._body(info, r, bodies, extra)
                rows.append(
                    QueuedMessage(
                        occ.id,
                        r.id,
                        r.phone,
                        r.town_id,
                        r.village_id,
                        r.carrier,
                        body_id,
                        segments,
                        -occ.priority,
                        now,
                        occ.scheduled_at,
                    )
                )
            outbox.write_chunk(self.engine, occ.id, rows, cursor=hi, excluded=dict(excluded))
            if self.on_progress is not None:
                self.on_progress(len(batch))
            queued_so_far += len(rows)
            bound.debug("occurrence.chunk", cursor=hi, rows=len(rows))
            if self.stop.is_set():
                bound.info("occurrence.interrupted", cursor=hi, queued=queued_so_far)
                return ExpansionResult(
                    occ.id,
                    OccurrenceState.EXPANDING,
                    queued_so_far,
                    dict(excluded),
                    interrupted=True,
                )
        queued = outbox.count_messages(self.engine, occ.id)
        outbox.set_occurrence_state(
            self.engine, occ.id, OccurrenceState.READY, now=self.clock(), queued=queued
        )
        bound.info("occurrence.expanded", queued=queued, excluded=dict(excluded), kind=occ.kind)
        return ExpansionResult(occ.id, OccurrenceState.READY, queued, dict(excluded))

    def _classify(
        self,
        campaign: Campaign,
        occ: Occurrence,
        r: RecipientRow,
        templates: dict[str, TemplateInfo],
        counts: dict[int, int],
        reached: set[int],
    ) -> tuple[str | None, TemplateInfo | None]:
        villages = self._villages.get(r.town_id)
        if villages is None or r.village_id not in villages:
            return INVALID, None
        if not self._in_audience(campaign, occ, r):
            return OUTSIDE_AUDIENCE, None
        info: TemplateInfo | None
        if "" in templates:
            info = templates[""]
        else:
            info = next((templates[s] for s in r.segments if s in templates), None)
            if info is None:
                return OUTSIDE_AUDIENCE, None
        if r.opted_out:
            return OPTED_OUT, None
        if r.id in reached:
            return ALREADY_REACHED, None
        if counts.get(r.id, 0) >= self.weekly_cap:
            return OVER_CAP, None
        return None, info

    def _body(
        self,
        info: TemplateInfo,
        r: RecipientRow,
        cache: dict[tuple[Any, ...], tuple[int, int]],
        extra: dict[str, Any],
    ) -> tuple[int, int]:
        key: tuple[Any, ...] = (
            info.name,
            r.town_id if "town" in info.variables else None,
            r.village_id if "village" in info.variables else None,
            r.id if info.per_recipient else None,
        )
        hit = cache.get(key)
        if hit is not None:
            return hit
        town = self.district.towns_by_id[r.town_id]
        village = next(v for v in town.villages if v.id == r.village_id)
        ctx = self.catalogue.context(
            town=town,
            village=village,
            recipient={"name": r.name or "", "segments": list(r.segments)},
            extra=extra,
        )
        rendered = self.catalogue.render(info.name, ctx)
        body_id = outbox.ensure_body(
            self.engine,
            text=rendered.text,
            template_name=rendered.template_name,
            template_hash=rendered.template_hash,
            chars=rendered.chars,
            segments=rendered.segments,
        )
        value = (body_id, rendered.segments)
        if not info.per_recipient:
            cache[key] = value
        return value

    def _letters(
        self, campaign: Campaign, occ: Occurrence, info: TemplateInfo, day: dt.date
    ) -> ExpansionResult:
        """A letter occurrence renders the open letter once per town, ready to print."""
        out = self.data_dir / "letters" / f"{campaign.name}-{day.isoformat()}"
        out.mkdir(parents=True, exist_ok=True)
        towns = [
            t
            for t in self.district.towns
            if (not campaign.audience.towns or t.id in campaign.audience.towns)
        ]
        for town in towns:
            rendered = self.catalogue.render(
                info.name, self.catalogue.context(town=town, today=day)
            )
            (out / f"{town.id}.html").write_text(rendered.text, encoding="utf-8")
        outbox.set_occurrence_state(
            self.engine, occ.id, OccurrenceState.DONE, now=self.clock(), queued=len(towns)
        )
        log.info(
            "occurrence.letters",
            occurrence_id=occ.id,
            campaign=occ.campaign,
            towns=len(towns),
            folder=str(out),
        )
        return ExpansionResult(occ.id, OccurrenceState.DONE, len(towns))
