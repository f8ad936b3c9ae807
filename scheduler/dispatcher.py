"""The dispatcher: drains the outbox through a provider, exactly once, inside sending hours.

Claimed messages are `sending` in their own commit before any provider call. Each send's
outcome is classified: transient failures go back to the queue with exponential backoff and
jitter (honouring Retry-After); permanent ones stop; an uncertain one (a 5xx or a timeout after
the request went out) is looked up at the provider before anything is sent again, and marked
`unknown` for an operator when the provider cannot tell. On start, messages a crash left in
`sending` are reconciled the same way.

The provider is a plug-in (scheduler.providers): this module knows only the neutral interface
(statuses, error kinds and flags), and sends in batches when the provider takes several
numbers per call (`max_batch`). An error the provider flags as stopping the campaign pauses
the occurrence and raises an alert instead of failing message after message.

The rate limits are shared by every dispatcher process through the database
(scheduler.ratelimit): each claimed batch reserves its sends' seconds in one short transaction,
and each message waits for its time. Claims overlap the sends: the next batch is claimed (and
its seconds reserved) while the send threads work through the current one, and a batch's
outcomes are recorded while the next one is being sent, so the threads never wait for the
database between batches.

Right before each send the clock is read again (the rate limiter may have held the message
past the end of the sending hours) and the number is checked against opt-outs recorded since
the claim; a message stopped by either goes back (queued, or cancelled) without counting as an
attempt.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from scheduler.gateway_templates import load_params
from scheduler.logs import get_logger
from scheduler.models import MessageState
from scheduler.phones import mask
from scheduler.providers.base import Accepted, ErrorKind, OutboundMessage, Provider, SendError
from scheduler.ratelimit import Limits
from scheduler.sending_hours import is_allowed, next_allowed
from scheduler.settings import Settings
from scheduler.store import delivery, ratelimits
from scheduler.store.delivery import Claimed, Outcome
from scheduler.store.optouts import OPTED_OUT

if TYPE_CHECKING:
    from scheduler.core import Core

log = get_logger("scheduler.dispatcher")


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    unknown: int = 0
    opted_out: int = 0
    # Cancelled because the number opted out (at the claim or right before the send).
    cancelled: int = 0
    # Put back without an attempt: outside the sending hours, or the dispatcher was stopped.
    deferred: int = 0
    # Put back because the provider refused the whole campaign (its occurrence is paused).
    halted: int = 0
    batches: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    _COUNTS = (
        "claimed",
        "sent",
        "retried",
        "failed",
        "unknown",
        "opted_out",
        "cancelled",
        "deferred",
        "halted",
        "batches",
    )

    def add(self, other: DispatchStats) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_outcome.items():
            self.by_outcome[k] = self.by_outcome.get(k, 0) + v


class _Schedule:
    """When each message of a batch may go under the rate limits (Unix times; 0: now) and
    when they stop being handed over (`deadline`). A send woken too late (a busy machine)
    would land in a later second on top of that second's own share: the batch's messages not
    yet handed over then give up their places and take new ones, in one reservation."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        claimed: list[Claimed],
        times: list[float],
        deadline: float,
    ) -> None:
        self.dispatcher = dispatcher
        self.claimed = claimed
        self.times = times
        self.deadline = deadline
        self.started = [False] * len(claimed)
        self.lock = threading.Lock()
        # Held back at all: the limits spread the batch over time (with room to spare under
        # them, the send threads set the pace and lateness means nothing).
        self.paced = bool(times) and max(times) - time.time() > _LATE_SECONDS

    def late(self, i: int, seen: float) -> None:
        with self.lock:
            if self.times[i] != seen:
                return  # another thread took new places for the batch meanwhile
            rest = [j for j in range(len(self.claimed)) if not self.started[j]]
            d = self.dispatcher
            needs = [d.limits.need(self.claimed[j].carrier, self.claimed[j].segments) for j in rest]
            fresh = ratelimits.reserve(d.engine, needs, d.limits, now=time.time())
            for j, t in zip(rest, fresh, strict=True):
                self.times[j] = t
        late_ms = int((time.time() - seen) * 1000)
        log.debug("dispatch.rate_late", messages=len(rest), late_ms=late_ms)


@dataclass
class _Batch:
    """A claimed batch on its way through the send threads."""

    claimed: list[Claimed]
    futures: list[Future[list[Outcome]]]
    stats: DispatchStats


# Batches in flight at once: the one being sent and the one claimed behind it.
_IN_FLIGHT = 2
# A send this far behind its place in the rate limit's second takes a new place.
_LATE_SECONDS = 0.1


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        settings: Settings,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        respect_hours: bool = True,
    ) -> None:
        self.engine = engine
        self.provider = provider
        self.settings = settings
        self.cfg = settings.dispatch
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        self.respect_hours = respect_hours
        # A provider that talks to no carrier (a rehearsal) says so: it is not slowed down.
        self.rate_limited = provider.paced
        self.limits = Limits(self.cfg.rate_per_second, dict(self.cfg.segment_rate_by_carrier))
        # Under a rate limit a batch's sends fit well inside its hand-over deadline (a quarter
        # of stale_sending_seconds), and several workers' batches together hold about two
        # seconds of sends, so they share the limit's seconds instead of one reserving ahead.
        self.batch_size = self.cfg.batch_size
        if self.rate_limited:
            rate = self.cfg.rate_per_second
            if self.cfg.stale_sending_seconds > 0:
                cap = math.ceil(rate * self.cfg.stale_sending_seconds / 4)
                self.batch_size = min(self.batch_size, max(self.cfg.concurrency, cap))
            if self.cfg.workers > 1:
                share = math.ceil(rate * 2 / self.cfg.workers)
                self.batch_size = min(self.batch_size, max(self.cfg.concurrency, share))
        self._optout_lock = threading.Lock()
        self._optout_checked = 0.0
        self._batch_phones: set[str] = set()
        self._in_flight: deque[_Batch] = deque()
        self._opted_out: set[str] = set()
        self._bodies: dict[int, str] = {}
        self._templates: dict[int, tuple[str, str | None]] = {}
        self._templates_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="send")

    def close(self) -> None:
        """Stop the send threads and close the provider (the dispatcher is its one user)."""
        self._pool.shutdown(wait=True)
        self.provider.close()

    # -- the loop ----------------------------------------------------------------------------

    def in_hours(self, now: dt.datetime) -> bool:
        return not self.respect_hours or is_allowed(
            now, self.settings.allowed_hours, self.settings.tz
        )

    def run(
        self,
        *,
        until_empty: bool = False,
        max_wait: float = 0.0,
        progress: Callable[[DispatchStats], None] | None = None,
    ) -> DispatchStats:
        """Send until stopped (or, with until_empty, until nothing is due).

        With until_empty, retries coming due within `max_wait` seconds of the outbox first
        running dry are waited for, and so are other dispatchers' batches still `sending` (the
        wait is bounded in wall-clock time too). `progress` is called with the running totals
        after each batch.
        """
        total = DispatchStats()
        total.add(self.reconcile())
        self.housekeeping()
        wait_until: dt.datetime | None = None
        wait_started = 0.0
        flight = self._in_flight
        try:
            while not self.stop.is_set():
                now = self.clock()
                hours = self.in_hours(now)
                found = False
                if hours and len(flight) < _IN_FLIGHT:
                    batch = self._start_batch()
                    found = bool(batch.claimed or batch.stats.cancelled)
                    if batch.claimed:
                        flight.append(batch)
                    elif batch.stats.cancelled:
                        total.add(batch.stats)
                if flight and (len(flight) >= _IN_FLIGHT or not found):
                    total.add(self._finish_batch(flight.popleft()))
                    if progress is not None:
                        progress(total)
                    continue
                if found:
                    continue
                if not hours:
                    if until_empty:
                        log.info("dispatch.outside_hours", now=now.isoformat())
                        break
                    wait = next_allowed(now, self.settings.allowed_hours, self.settings.tz) - now
                    self.stop.wait(min(wait.total_seconds(), 60.0))
                    continue
                # Nothing due and nothing in flight.
                total.add(self.reconcile())
                delivery.finish_occurrences(self.engine, now=self.clock())
                self.housekeeping()
                if until_empty:
                    now = self.clock()
                    if wait_until is None:
                        wait_until = now + dt.timedelta(seconds=max_wait)
                        wait_started = time.monotonic()
                    spent = time.monotonic() - wait_started
                    if spent >= max_wait:
                        break
                    due = delivery.next_due_at(self.engine)
                    if due is not None and due <= wait_until:
                        pause = (due - now).total_seconds()
                    elif delivery.unfinished(self.engine)["sending"]:
                        # Another dispatcher's batch: its retries may yet come back to us.
                        pause = self.cfg.poll_seconds
                    else:
                        break
                    self.stop.wait(max(min(pause, max_wait - spent), 0.05))
                    continue
                self.stop.wait(self.cfg.poll_seconds)
        finally:
            # Stopped: the batches still in flight go back unsent (their threads see `stop`).
            while flight:
                total.add(self._finish_batch(flight.popleft()))
        delivery.finish_occurrences(self.engine, now=self.clock())
        return total

    def housekeeping(self) -> None:
        """Expire status callbacks whose message never appeared."""
        cutoff = self.clock() - dt.timedelta(days=self.cfg.pending_status_days)
        expired = delivery.expire_pending_statuses(self.engine, older_than=cutoff)
        if expired:
            log.info("dispatch.pending_statuses_expired", rows=expired)

    def run_batch(self) -> DispatchStats:
        """Claim one batch, send it with bounded concurrency, record every outcome."""
        batch = self._start_batch()
        if not batch.claimed:
            return batch.stats
        self._in_flight.append(batch)
        return self._finish_batch(self._in_flight.popleft())

    def _start_batch(self) -> _Batch:
        """Claim a batch, reserve its seconds under the rate limits and hand it to the send
        threads, in the order of those seconds; returns without waiting for the sends."""
        stats = DispatchStats()
        busy = {c.phone for b in self._in_flight for c in b.claimed}
        batch = delivery.claim_batch(
            self.engine, now=self.clock(), limit=self.batch_size, exclude_phones=busy
        )
        claimed = batch.claimed
        stats.cancelled = batch.cancelled
        if not claimed:
            return _Batch([], [], stats)
        stats.claimed = len(claimed)
        stats.batches = 1
        missing = [c.body_id for c in claimed if c.body_id not in self._bodies]
        if missing:
            self._bodies.update(delivery.bodies(self.engine, missing))
        # An opt-out committed after the claim (it could not cancel rows already `sending`).
        with self._optout_lock:
            self._batch_phones = {c.phone for b in self._in_flight for c in b.claimed}
            self._batch_phones.update(c.phone for c in claimed)
            self._opted_out = delivery.opted_out_among(self.engine, self._batch_phones)
            self._optout_checked = time.monotonic()
        if self.rate_limited:
            needs = [self.limits.need(c.carrier, c.segments) for c in claimed]
            times = ratelimits.reserve(self.engine, needs, self.limits, now=time.time())
            order = sorted(range(len(claimed)), key=lambda i: times[i])
            claimed = [claimed[i] for i in order]
            at = [times[i] for i in order]
        else:
            at = [0.0] * len(claimed)

        # Not handed over later than this: another dispatcher settles messages `sending` for
        # longer than stale_sending_seconds as left by a crash (looking them up at the
        # provider from their claim time), so a live one must be done with them well before.
        # 0 says no other dispatcher is alive (everything `sending` is settled at start).
        stale = self.cfg.stale_sending_seconds
        deadline = time.time() + stale / 2 if stale > 0 else math.inf
        schedule = _Schedule(self, claimed, at, deadline)
        size = max(1, self.provider.max_batch)
        futures: list[Future[list[Outcome]]]
        if size == 1:
            futures = [self._pool.submit(self._send_one, schedule, i) for i in range(len(claimed))]
        else:
            futures = [
                self._pool.submit(self._send_chunk, schedule, range(i, min(i + size, len(claimed))))
                for i in range(0, len(claimed), size)
            ]
        return _Batch(claimed, futures, stats)

    def _finish_batch(self, batch: _Batch) -> DispatchStats:
        """Wait for a batch's sends and record them in one transaction."""
        outcomes = [o for f in batch.futures for o in f.result()]
        self._record(outcomes, batch.stats)
        return batch.stats

    def _record(self, outcomes: list[Outcome], stats: DispatchStats) -> None:
        # Opt-outs the provider reported are recorded in the same transaction.
        delivery.record_outcomes(self.engine, outcomes, tz=self.settings.tz)
        for o in outcomes:
            stats.by_outcome[o.attempt_outcome] = stats.by_outcome.get(o.attempt_outcome, 0) + 1
            if o.state == MessageState.SENT:
                stats.sent += 1
            elif o.state == MessageState.CANCELLED:
                stats.cancelled += 1
            elif o.state == MessageState.QUEUED and not o.attempted:
                stats.deferred += 1
            elif o.state == MessageState.QUEUED:
                stats.retried += 1
            elif o.state == MessageState.UNKNOWN:
                stats.unknown += 1
            else:
                stats.failed += 1
            if o.opted_out:
                stats.opted_out += 1
            if o.halt:
                stats.halted += 1

    # -- one message -------------------------------------------------------------------------

    def _outbound(self, c: Claimed) -> OutboundMessage:
        template, params = self._template_of(c.body_id)
        return OutboundMessage(
            id=c.id,
            phone=c.phone,
            body=self._bodies[c.body_id],
            carrier=c.carrier,
            segments=c.segments,
            template=template,
            params=load_params(params, self.provider.name),
        )

    def _template_of(self, body_id: int) -> tuple[str | None, str | None]:
        """A body's template name and gateway parameters, read once for every body loaded so
        far (a batch's bodies in one query)."""
        found = self._templates.get(body_id)
        if found is None:
            with self._templates_lock:
                wanted = [b for b in (*self._bodies, body_id) if b not in self._templates]
                if wanted:
                    self._templates.update(delivery.body_templates(self.engine, wanted))
            found = self._templates.get(body_id)
        return found if found is not None else (None, None)

    def _opted_out_since_claim(self, phone: str) -> bool:
        """Checked right before each send; the batch's numbers are looked up again at most
        once a second, so a slow batch still honours an opt-out that lands mid-way."""
        with self._optout_lock:
            if time.monotonic() - self._optout_checked >= 1.0:
                self._opted_out = delivery.opted_out_among(self.engine, self._batch_phones)
                self._optout_checked = time.monotonic()
            return phone in self._opted_out

    def _not_sent(
        self,
        c: Claimed,
        now: dt.datetime,
        state: MessageState,
        outcome: str,
        *,
        next_attempt_at: dt.datetime | None = None,
        error_code: str | None = None,
    ) -> Outcome:
        """Nothing reached the provider: not an attempt, not a failure."""
        return Outcome(
            c,
            state,
            now,
            outcome,
            self.provider.name,
            error_code=error_code,
            next_attempt_at=next_attempt_at,
            attempted=False,
        )

    def _past_hours(self, c: Claimed, now: dt.datetime) -> Outcome | None:
        if self.in_hours(now):
            return None
        # The batch began inside the hours; this message's turn came after they closed.
        opening = next_allowed(now, self.settings.allowed_hours, self.settings.tz)
        return self._not_sent(c, now, MessageState.QUEUED, "outside_hours", next_attempt_at=opening)

    def _ready(self, schedule: _Schedule, i: int) -> Outcome | tuple[OutboundMessage, dt.datetime]:
        """The checks before a hand-over: the message to send and when, or why it is not sent.

        The message waits for its place under the rate limits (see _Schedule), and goes back
        to the queue instead after the schedule's deadline (see _start_batch)."""
        c = schedule.claimed[i]
        try:
            return self._checked(c, schedule, i)
        finally:
            schedule.started[i] = True

    def _checked(
        self, c: Claimed, schedule: _Schedule, i: int
    ) -> Outcome | tuple[OutboundMessage, dt.datetime]:
        # Checked before waiting for the rate limiter (no point waiting) and again after it.
        late = self._past_hours(c, self.clock())
        if late is not None:
            return late
        while True:
            at = schedule.times[i]
            wait = at - time.time() if at else 0.0
            if self.stop.wait(wait) if wait > 0 else self.stop.is_set():
                now = self.clock()
                return self._not_sent(c, now, MessageState.QUEUED, "stopped", next_attempt_at=now)
            if schedule.times[i] != at:
                continue  # new places were taken while it waited
            if not schedule.paced or time.time() - at <= _LATE_SECONDS:
                break
            schedule.late(i, at)
        if time.time() > schedule.deadline:
            now = self.clock()
            return self._not_sent(c, now, MessageState.QUEUED, "held_too_long", next_attempt_at=now)
        started = self.clock()
        late = self._past_hours(c, started)
        if late is not None:
            return late
        if self._opted_out_since_claim(c.phone):
            log.info("dispatch.opted_out_since_claim", message_id=c.id, phone=mask(c.phone))
            return self._not_sent(
                c, started, MessageState.CANCELLED, OPTED_OUT, error_code=OPTED_OUT
            )
        return self._outbound(c), started

    def _send_one(self, schedule: _Schedule, i: int) -> list[Outcome]:
        c = schedule.claimed[i]
        ready = self._ready(schedule, i)
        if isinstance(ready, Outcome):
            return [ready]
        msg, started = ready
        try:
            accepted = self.provider.send(msg)
        except SendError as exc:
            return [self._failure(c, msg, exc, started)]
        except Exception as exc:  # a bug or an unexpected library error: do not risk resending
            return [self._unexpected(c, exc)]
        return [self._accepted(c, accepted, at=started)]

    def _send_chunk(self, schedule: _Schedule, indices: Sequence[int]) -> list[Outcome]:
        """Up to `max_batch` messages in one provider call, each checked first as one is (so
        the call goes when its last number's reservation allows: the limits count numbers)."""
        outcomes: dict[int, Outcome] = {}
        ready: list[tuple[Claimed, OutboundMessage, dt.datetime]] = []
        chunk = [schedule.claimed[i] for i in indices]
        for i, c in zip(indices, chunk, strict=True):
            r = self._ready(schedule, i)
            if isinstance(r, Outcome):
                outcomes[c.id] = r
            else:
                ready.append((c, *r))
        if ready:
            results: list[Accepted | SendError | Exception]
            try:
                results = list(self.provider.send_batch([m for _, m, _ in ready]))
            except Exception as exc:  # the provider broke its contract: do not risk resending
                results = [exc] * len(ready)
            for (c, msg, started), result in zip(ready, results, strict=True):
                if isinstance(result, SendError):
                    outcomes[c.id] = self._failure(c, msg, result, started)
                elif isinstance(result, Accepted):
                    outcomes[c.id] = self._accepted(c, result, at=started)
                else:
                    outcomes[c.id] = self._unexpected(c, result)
        return [outcomes[c.id] for c in chunk]

    def _unexpected(self, c: Claimed, exc: BaseException) -> Outcome:
        log.error("dispatch.unexpected", message_id=c.id, phone=mask(c.phone), exc_info=exc)
        return Outcome(
            c,
            MessageState.UNKNOWN,
            self.clock(),
            "unexpected",
            self.provider.name,
            detail=repr(exc)[:500],
        )

    def _accepted(
        self,
        c: Claimed,
        accepted: Accepted,
        outcome: str = "sent",
        *,
        at: dt.datetime | None = None,
    ) -> Outcome:
        """`at`: when the message was handed over (its sent_at), if known."""
        return Outcome(
            c,
            MessageState.SENT,
            at or self.clock(),
            outcome,
            self.provider.name,
            provider_message_id=accepted.provider_message_id,
            error_code=accepted.error_code,
            final_status=accepted.final_status,
        )

    def _failure(
        self, c: Claimed, msg: OutboundMessage, exc: SendError, started: dt.datetime
    ) -> Outcome:
        now = self.clock()
        if exc.halt:
            # Nothing in this campaign can go out until someone fixes the account: pause the
            # occurrence (in the outcome's transaction) and put the message back, unsent.
            log.error(
                "dispatch.campaign_halted",
                message_id=c.id,
                occurrence_id=c.occurrence_id,
                code=exc.code,
                meaning=exc.meaning,
            )
            return Outcome(
                c,
                MessageState.QUEUED,
                now,
                "halted",
                self.provider.name,
                error_code=exc.code,
                detail=str(exc)[:500],
                next_attempt_at=now,
                halt=True,
            )
        if exc.kind == ErrorKind.TRANSIENT:
            return self._requeue(c, now, "transient", exc.code, exc.retry_after, detail=str(exc))
        if exc.kind == ErrorKind.PERMANENT:
            log.info(
                "dispatch.permanent",
                message_id=c.id,
                phone=mask(c.phone),
                code=exc.code,
                meaning=exc.meaning,
            )
            return Outcome(
                c,
                MessageState.FAILED,
                now,
                "opt_out" if exc.opted_out else "permanent",
                self.provider.name,
                error_code=exc.code,
                detail=str(exc)[:500],
                opted_out=exc.opted_out,
            )
        return self._settle_uncertain(c, msg, started, exc.code, str(exc))

    def _settle_uncertain(
        self,
        c: Claimed,
        msg: OutboundMessage,
        since: dt.datetime,
        code: str | None,
        detail: str,
    ) -> Outcome:
        """The provider may have the message: look before anything is sent again."""
        try:
            found: Accepted | SendError | None = self.provider.find_sent(
                msg, since - dt.timedelta(seconds=5)
            )
        except SendError as exc:
            found = exc
        return self._settled(c, found, code, detail)

    def _settled(
        self,
        c: Claimed,
        found: Accepted | SendError | None,
        code: str | None,
        detail: str,
        *,
        immediate: bool = False,
    ) -> Outcome:
        """The outcome of a lookup: found (sent), not found (queue again), or cannot tell."""
        if isinstance(found, SendError):
            log.warning("dispatch.unknown", message_id=c.id, phone=mask(c.phone), code=code)
            return Outcome(
                c,
                MessageState.UNKNOWN,
                self.clock(),
                "unknown",
                self.provider.name,
                error_code=code,
                detail=f"{detail}; lookup: {found}"[:500],
            )
        if found is not None:
            return self._accepted(c, found, "found")
        return self._requeue(
            c, self.clock(), "not_found", code, None, detail=detail, immediate=immediate
        )

    def _requeue(
        self,
        c: Claimed,
        now: dt.datetime,
        outcome: str,
        code: str | None,
        retry_after: float | None,
        *,
        detail: str | None = None,
        count_attempt: bool = True,
        immediate: bool = False,
    ) -> Outcome:
        if count_attempt and c.attempts >= self.cfg.max_attempts:
            return Outcome(
                c,
                MessageState.FAILED,
                now,
                "gave_up",
                self.provider.name,
                error_code=code,
                detail=f"{c.attempts} attempts; last: {detail}"[:500],
            )
        backoff = min(
            self.cfg.backoff_max_seconds, self.cfg.backoff_base_seconds * 2 ** (c.attempts - 1)
        )
        delay = backoff * self.rng.uniform(0.5, 1.5)
        if retry_after:
            delay = max(delay, retry_after)
        if not count_attempt or immediate:
            delay = 0.0
        return Outcome(
            c,
            MessageState.QUEUED,
            now,
            outcome,
            self.provider.name,
            error_code=code,
            detail=detail,
            next_attempt_at=now + dt.timedelta(seconds=delay),
        )

    # -- after a crash -----------------------------------------------------------------------

    def reconcile(self) -> DispatchStats:
        """Settle messages a crash left `sending`, the way an uncertain send is settled."""
        with delivery.reconciling(self.engine) as mine:
            if not mine:  # another dispatcher is settling them
                return DispatchStats()
            return self._reconcile()

    def _reconcile(self) -> DispatchStats:
        stats = DispatchStats()
        cutoff = self.clock() - dt.timedelta(seconds=self.cfg.stale_sending_seconds)
        stuck = delivery.stuck_sending(self.engine, claimed_before=cutoff)
        if not stuck:
            return stats
        log.warning("dispatch.reconcile", messages=len(stuck))
        self._bodies.update(delivery.bodies(self.engine, [c.body_id for c, _ in stuck]))
        now = self.clock()
        lookups = [
            (self._outbound(c), (since or now) - dt.timedelta(seconds=5)) for c, since in stuck
        ]
        # One lookup call for them all: a provider may answer them in one pass.
        found = self.provider.find_sent_many(lookups)
        outcomes = [
            self._settled(c, f, None, "left sending by a crash", immediate=True)
            for (c, _), f in zip(stuck, found, strict=True)
        ]
        self._record(outcomes, stats)
        return stats


def build_dispatcher(
    core: Core,
    provider: Provider | None = None,
    *,
    settings: Settings | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
    respect_hours: bool = True,
) -> Dispatcher:
    """The one place a dispatcher is built (the service, `pingan dispatch`, the simulator):
    the configured provider from the registry unless one is given, the core's clock and stop.
    `settings` replaces the core's (the simulator's scratch settings)."""
    from scheduler.providers import make_provider

    chosen = settings or core.settings
    return Dispatcher(
        core.engine,
        provider or make_provider(chosen),
        chosen,
        clock=clock or core.clock,
        stop=stop or core.stop,
        rng=rng,
        respect_hours=respect_hours,
    )
