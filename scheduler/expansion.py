"""Expanding an occurrence into the outbox: one queued message per eligible recipient, once.

Recipients stream in id-keyed batches; each template is rendered once per distinct context
(once per town, say) unless it uses a per-recipient variable; each chunk commits together with
the occurrence's cursor, so a killed expansion resumes where it stopped and never duplicates.
Each chunk checks the weekly cap and writes its messages under a database lock, so expansions
running at once cannot both fill the same resident's last slot.

One bad campaign fails alone: whatever goes wrong while expanding (an unknown or unapproved
template, a template that breaks its limits, any unexpected error) marks that occurrence
`failed` with the reason, and the caller carries on with the others. A template that fails
for one recipient only excludes that recipient (`render_error`); one that fails for most of
them fails the occurrence. `pingan occurrences retry` resumes a failed one from its cursor.
"""

from __future__ import annotations

import datetime as dt
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.campaigns import Campaign, week_index, week_start
from scheduler.config import District
from scheduler.db import db_time_cache
from scheduler.exceptions import PingAnError, TemplateError
from scheduler.firings import Target
from scheduler.gateway_templates import GatewayTemplates, dump_params
from scheduler.logs import get_logger, mask_text
from scheduler.models import Occurrence, OccurrenceState
from scheduler.store import outbox
from scheduler.store.outbox import RecipientRow, WeeklyCap
from scheduler.store.retention import period_of
from scheduler.templating import RECIPIENT_VARIABLES, Catalogue, TemplateInfo

log = get_logger("scheduler.expansion")

# Why a recipient got no message from an occurrence; counted on the occurrence.
OPTED_OUT = "opted_out"
OVER_CAP = "over_cap"
OUTSIDE_AUDIENCE = "outside_audience"
INVALID = "invalid"
ALREADY_REACHED = "already_reached"
OVER_LIMIT = outbox.OVER_LIMIT
RENDER_ERROR = "render_error"

# A template that failed this many distinct renders, and more often than it succeeded, is
# broken for the campaign, not for a few recipients: the occurrence fails.
MAX_RENDER_FAILURES = 20


class ExpansionFailed(PingAnError):
    """The occurrence cannot be expanded."""


@dataclass
class _RenderStats:
    ok: int = 0
    failed: int = 0
    first_error: str | None = None

    def failure(self, info: TemplateInfo, exc: TemplateError) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = str(exc)
        if self.failed >= MAX_RENDER_FAILURES and self.failed > self.ok:
            raise ExpansionFailed(self.summary(info.name))

    def summary(self, name: str) -> str:
        return (
            f"template {name!r} failed {self.failed} of {self.failed + self.ok} renders; "
            f"first error: {self.first_error}"
        )


@dataclass
class ExpansionResult:
    occurrence_id: int
    state: OccurrenceState
    queued: int
    excluded: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False
    campaign: str = ""


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
        gateway_templates: GatewayTemplates | None = None,
    ) -> None:
        self.engine = engine
        # Template codes and parameters of the domestic gateways (stored on each body).
        self.gateway_templates = gateway_templates
        self.district = district
        self.catalogue = catalogue
        self.tz = tz
        self.weekly_cap = weekly_cap
        self.data_dir = data_dir
        self.chunk_size = chunk_size
        self.stop = stop or threading.Event()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._pairs = frozenset((t.id, v.id) for t in district.towns for v in t.villages)
        self._parsed_target: tuple[object, Target] | None = None

    def expand(self, campaign: Campaign, occ: Occurrence) -> ExpansionResult:
        """Expand (or resume expanding) `occ`; does nothing to one already expanded.

        Never raises for the occurrence's own problems: any exception marks it `failed` with
        the reason (logged as `occurrence.failed`) and comes back as a FAILED result.
        """
        if occ.state != OccurrenceState.EXPANDING:
            return result_of(occ)
        try:
            local_day = occ.scheduled_at.astimezone(self.tz).date()
            templates = self._templates(campaign, local_day)
            if campaign.channel == "letter":
                return self._letters(campaign, occ, templates[""], local_day)
            return self._sms(campaign, occ, templates, local_day)
        except Exception as exc:
            return self.fail(occ, exc)

    def fail(self, occ: Occurrence, exc: Exception | str) -> ExpansionResult:
        """Mark `occ` failed with the reason; the caller goes on with the other campaigns."""
        reason = exc if isinstance(exc, str) else describe(exc)
        bound = log.bind(occurrence_id=occ.id, campaign=occ.campaign)
        try:
            outbox.set_occurrence_state(
                self.engine,
                occ.id,
                OccurrenceState.FAILED,
                error=reason,
                now=self.clock(),
                # What earlier chunks queued before the failure is still sent.
                queued=outbox.count_messages(self.engine, occ.id),
            )
        except Exception as db_exc:
            # The database itself is failing: the occurrence stays `expanding` and is resumed
            # at the next start.
            bound.error("occurrence.fail_not_recorded", reason=reason, error=describe(db_exc))
            return ExpansionResult(
                occ.id, OccurrenceState.EXPANDING, occ.queued, error=reason, campaign=occ.campaign
            )
        if isinstance(exc, (str, PingAnError)):
            bound.error("occurrence.failed", reason=reason)
        else:
            bound.error("occurrence.failed", reason=reason, traceback=masked_traceback(exc))
        fresh = outbox.get_occurrence(self.engine, occ.id)
        return result_of(fresh or occ)

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

    def _write_by_select(
        self,
        info: TemplateInfo,
        summary: outbox.ChunkSummary,
        bodies: dict[tuple[Any, ...], tuple[int, int] | TemplateError],
        extra: dict[str, Any],
        max_segments: int | None,
        renders: _RenderStats,
        *,
        occ_id: int,
        rank: int,
        queued_at: Any,
        not_before: Any,
        cap: WeeklyCap,
        expect_cursor: int,
        excluded: Counter[str],
        period: dt.date,
    ) -> outbox.ChunkWritten | None:
        """Write one chunk by `INSERT … SELECT`, its places' texts rendered first; None when
        one of them failed to render, so the chunk goes row by row and excludes exactly those
        residents as `render_error`."""
        by_town = "town" in info.variables
        by_village = "village" in info.variables
        places: list[tuple[str, str, int, int]] = []
        counted: Counter[str] = Counter()
        eligible = 0
        for town, village, residents, opted in summary.groups:
            if (town, village) not in self._pairs:
                counted[INVALID] += residents
                continue
            if opted:
                counted[OPTED_OUT] += opted
            if residents == opted:
                continue
            key = (info.name, town if by_town else None, village if by_village else None, None)
            body = bodies.get(key)
            if body is None:
                place = RecipientRow(0, "", None, town, village, "", None, (), False)
                body = self._body(info, place, bodies, extra, max_segments, renders)
            if isinstance(body, TemplateError):
                return None
            places.append((town, village, body[0], body[1]))
            eligible += residents - opted
        return outbox.write_capped_select(
            self.engine,
            occ_id,
            bodies=places,
            eligible=eligible,
            rank=rank,
            queued_at=queued_at,
            not_before=not_before,
            cap=cap,
            expect_cursor=expect_cursor,
            cursor=summary.hi,
            excluded=dict(excluded + counted),
            period=period,
        )

    @staticmethod
    def _has_filters(campaign: Campaign, target: Target) -> bool:
        """Whether `_in_audience` can refuse anyone (most campaigns reach every resident)."""
        aud = campaign.audience
        return bool(
            target.town
            or target.village
            or aud.towns
            or aud.villages
            or aud.carriers
            or aud.residence
            or aud.segments
        )

    def _target(self, occ: Occurrence) -> Target:
        """The occurrence's typed target, parsed once per occurrence (asked for every row)."""
        raw = occ.target
        cached = self._parsed_target
        if cached is not None and cached[0] is raw:
            return cached[1]
        target = Target.parse(raw)
        self._parsed_target = (raw, target)
        return target

    def _in_audience(self, campaign: Campaign, occ: Occurrence, r: RecipientRow) -> bool:
        aud = campaign.audience
        target = self._target(occ)
        if target.town and r.town_id != target.town:
            return False
        if target.village and r.village_id != target.village:
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
        cap = WeeklyCap(week_from, week_to, self.weekly_cap)
        target = self._target(occ)
        limit = target.limit
        topup_window = target.topup_window
        excluded: Counter[str] = Counter(occ.excluded or {})
        queued_so_far = outbox.count_messages(self.engine, occ.id) if occ.cursor else 0
        bodies: dict[tuple[Any, ...], tuple[int, int] | TemplateError] = {}
        # Event text (a case's fraud type) only as values from the configured lists.
        extra = self.catalogue.event_values(dict(target.extra))
        # Event SMS go out unreviewed by a person: held to the segment limit, never sent long.
        max_segments = self.catalogue.max_segments if campaign.schedule.event else None
        renders = _RenderStats()
        cursor = occ.cursor
        # Everything the per-resident loop needs, looked up once: the loop runs a million
        # times, and attribute reads, NamedTuples and re-built tuples were a fifth of it.
        stored_time = db_time_cache(self.engine.dialect.name)
        occ_id, rank = occ.id, -occ.priority
        period = period_of(occ.scheduled_at, self.tz)
        not_before = stored_time(occ.scheduled_at)
        pairs = self._pairs
        filtered = self._has_filters(campaign, target)
        single = templates.get("")
        body_keys = {
            info.name: ("town" in info.variables, "village" in info.variables, info.per_recipient)
            for info in templates.values()
        }
        cap_n = self.weekly_cap
        # A template without per-recipient text, for everyone, without a limit: each chunk is
        # one INSERT … SELECT (see `outbox.write_capped_select`); otherwise rows are built here.
        by_select = (
            single is not None
            and not body_keys[single.name][2]
            and not filtered
            and limit is None
            and topup_window is None
        )
        if by_select:
            outbox.refresh_planner_stats(self.engine)
        while True:
            written: outbox.ChunkWritten | None = None
            if by_select:
                assert single is not None
                summary = outbox.summarise_chunk(
                    self.engine, after_id=cursor, batch_size=self.chunk_size
                )
                if summary is None:
                    break
                hi, n_read = summary.hi, summary.read
                written = self._write_by_select(
                    single,
                    summary,
                    bodies,
                    extra,
                    max_segments,
                    renders,
                    occ_id=occ_id,
                    rank=rank,
                    queued_at=stored_time(self.clock()),
                    not_before=not_before,
                    cap=cap,
                    expect_cursor=cursor,
                    excluded=excluded,
                    period=period,
                )
            if written is None:
                # An occurrence aimed at one town or village (a top-up, a local-case alert)
                # reads only its residents; `_in_audience` still checks every row.
                batch = next(
                    outbox.iter_recipient_pages(
                        self.engine,
                        after_id=cursor,
                        batch_size=self.chunk_size,
                        town_id=target.town,
                        village_id=target.village,
                    ),
                    None,
                )
                if batch is None:
                    break
                n_read = len(batch)
                lo, hi = batch[0][0], batch[-1][0]
                # A first look without the lock spares rendering for residents already at the cap;
                # the chunk's write checks again under it.
                counts = outbox.messages_per_recipient(
                    self.engine,
                    outbox.sms_occurrences_between(self.engine, week_from, week_to, exclude=occ.id),
                    lo,
                    hi,
                )
                reached = (
                    outbox.recipients_messaged(
                        self.engine,
                        town_id=target.town or "",
                        start=topup_window[0],
                        end=topup_window[1],
                        lo=lo,
                        hi=hi,
                    )
                    if topup_window
                    else set()
                )
                queued_at = stored_time(self.clock())
                room = None if limit is None else limit - queued_so_far
                rows: list[tuple[Any, ...]] = []
                for r in batch:
                    rid, phone, _name, town, village, carrier, _res, segs, opted = r
                    info = single
                    reason: str | None = None
                    if (town, village) not in pairs:
                        reason = INVALID
                    elif filtered and not self._in_audience(campaign, occ, _recipient(r)):
                        reason = OUTSIDE_AUDIENCE
                    else:
                        if info is None:
                            info = next(
                                (templates[x] for x in outbox.segments_of(segs) if x in templates),
                                None,
                            )
                        if info is None:
                            reason = OUTSIDE_AUDIENCE
                        elif opted:
                            reason = OPTED_OUT
                        elif reached and rid in reached:
                            reason = ALREADY_REACHED
                        elif counts and counts.get(rid, 0) >= cap_n:
                            reason = OVER_CAP
                        elif room is not None and len(rows) >= room:
                            reason = OVER_LIMIT
                    if reason is not None:
                        excluded[reason] += 1
                        continue
                    assert info is not None
                    by_town, by_village, per_recipient = body_keys[info.name]
                    body = bodies.get(
                        (
                            info.name,
                            town if by_town else None,
                            village if by_village else None,
                            rid if per_recipient else None,
                        )
                    )
                    if body is None:
                        body = self._body(info, _recipient(r), bodies, extra, max_segments, renders)
                    if isinstance(body, TemplateError):
                        excluded[RENDER_ERROR] += 1
                        continue
                    rows.append(
                        (
                            occ_id,
                            rid,
                            phone,
                            town,
                            village,
                            carrier,
                            body[0],
                            body[1],
                            rank,
                            queued_at,
                            not_before,
                        )
                    )
                if renders.failed and not renders.ok:
                    # Nothing has rendered at all: the template is broken, not one recipient's text.
                    raise ExpansionFailed(renders.summary(_template_names(templates)))
                written = outbox.write_capped_rows(
                    self.engine,
                    occ.id,
                    rows,
                    cap=cap,
                    expect_cursor=cursor,
                    cursor=hi,
                    excluded=dict(excluded),
                    period=period,
                    room=None if limit is None else max(limit - queued_so_far, 0),
                )
            if written.stale:
                bound.warning("occurrence.expanded_elsewhere", cursor=cursor)
                return ExpansionResult(
                    occ.id,
                    OccurrenceState.EXPANDING,
                    queued_so_far,
                    dict(excluded),
                    interrupted=True,
                    campaign=occ.campaign,
                )
            cursor = hi
            excluded = Counter(written.excluded)
            queued_so_far += written.written
            if self.on_progress is not None:
                self.on_progress(n_read)
            bound.debug("occurrence.chunk", cursor=hi, rows=written.written)
            if self.stop.is_set():
                bound.info("occurrence.interrupted", cursor=hi, queued=queued_so_far)
                return ExpansionResult(
                    occ.id,
                    OccurrenceState.EXPANDING,
                    queued_so_far,
                    dict(excluded),
                    interrupted=True,
                    campaign=occ.campaign,
                )
        queued = outbox.count_messages(self.engine, occ.id)
        outbox.set_occurrence_state(
            self.engine, occ.id, OccurrenceState.READY, now=self.clock(), queued=queued
        )
        bound.info("occurrence.expanded", queued=queued, excluded=dict(excluded), kind=occ.kind)
        if renders.failed:
            bound.warning(
                "occurrence.render_errors",
                recipients=excluded[RENDER_ERROR],
                first_error=renders.first_error,
            )
        return ExpansionResult(
            occ.id, OccurrenceState.READY, queued, dict(excluded), campaign=occ.campaign
        )

    def _body(
        self,
        info: TemplateInfo,
        r: RecipientRow,
        cache: dict[tuple[Any, ...], tuple[int, int] | TemplateError],
        extra: dict[str, Any],
        max_segments: int | None,
        renders: _RenderStats,
    ) -> tuple[int, int] | TemplateError:
        """The stored body for this recipient, or the error its rendering raised (a failed
        context is remembered like a good one, so it is not rendered again)."""
        gateways = self.gateway_templates
        # A gateway parameter may read a variable the text does not (the town, say).
        used = info.variables | (gateways.variables(info.name) if gateways else frozenset())
        per_recipient = info.per_recipient or bool(used & RECIPIENT_VARIABLES)
        key: tuple[Any, ...] = (
            info.name,
            r.town_id if "town" in used else None,
            r.village_id if "village" in used else None,
            r.id if per_recipient else None,
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
        try:
            rendered = self.catalogue.render(info.name, ctx, max_segments=max_segments)
            params = gateways.render(info.name, ctx) if gateways else {}
        except TemplateError as exc:
            if not per_recipient:
                cache[key] = exc
            renders.failure(info, exc)
            return exc
        renders.ok += 1
        body_id = outbox.ensure_body(
            self.engine,
            text=rendered.text,
            template_name=rendered.template_name,
            template_hash=rendered.template_hash,
            chars=rendered.chars,
            segments=rendered.segments,
            params=dump_params(params),
        )
        value = (body_id, rendered.segments)
        if not per_recipient:
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
        return ExpansionResult(occ.id, OccurrenceState.DONE, len(towns), campaign=occ.campaign)


def describe(exc: BaseException) -> str:
    """An error as one line for an operator, phone numbers masked (a database error quotes
    its parameters)."""
    text = str(exc) if isinstance(exc, PingAnError) else f"{type(exc).__name__}: {exc}"
    return mask_text(text)


def masked_traceback(exc: BaseException) -> str:
    """The traceback of an unexpected error for the log, phone numbers masked."""
    return mask_text("".join(traceback.format_exception(exc)))


def result_of(occ: Occurrence) -> ExpansionResult:
    """The result an occurrence already carries (one expanded, failed or being sent)."""
    return ExpansionResult(
        occ.id, occ.state, occ.queued, dict(occ.excluded or {}), occ.error, campaign=occ.campaign
    )


def _recipient(row: tuple[Any, ...]) -> RecipientRow:
    """A raw recipient page row as the RecipientRow the slower checks and rendering read."""
    rid, phone, name, town, village, carrier, residence, segments, opted = row
    return RecipientRow(
        rid,
        phone,
        name,
        town,
        village,
        carrier,
        residence,
        outbox.segments_of(segments),
        bool(opted),
    )


def _template_names(templates: dict[str, TemplateInfo]) -> str:
    return ", ".join(sorted({t.name for t in templates.values()}))
