"""The dispatcher: drains the outbox through a provider, exactly once, inside sending hours.

Claimed messages are `sending` in their own commit before any provider call. Each send's
outcome is classified: transient failures go back to the queue with exponential backoff and
jitter (honouring Retry-After); permanent ones stop; an uncertain one (a 5xx or a timeout after
the request went out) is looked up at the provider before anything is sent again, and marked
`unknown` for an operator when the provider cannot tell. On start, messages a crash left in
`sending` are reconciled the same way.

Right before each send the clock is read again (the rate limiter may have held the message
past the end of the sending hours) and the number is checked against opt-outs recorded since
the claim; a message stopped by either goes back (queued, or cancelled) without counting as an
attempt.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from scheduler.logs import get_logger
from scheduler.models import MessageState
from scheduler.phones import mask
from scheduler.providers.base import Accepted, ErrorKind, OutboundMessage, Provider, SendError
from scheduler.ratelimit import TokenBucket
from scheduler.sending_hours import is_allowed, next_allowed
from scheduler.settings import Settings
from scheduler.store import delivery
from scheduler.store.delivery import Claimed, Outcome
from scheduler.store.optouts import OPTED_OUT

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
        "batches",
    )

    def add(self, other: DispatchStats) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_outcome.items():
            self.by_outcome[k] = self.by_outcome.get(k, 0) + v


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
        # The dry-run provider talks to no carrier: it is held to the rate limits only if asked
        # (PINGAN_DRYRUN__RATE_LIMITED), so a rehearsal is not slowed to the real pace.
        self.rate_limited = provider.name != "dryrun" or settings.dryrun.rate_limited
        self.rate = TokenBucket(self.cfg.rate_per_second)
        self.carrier_rates = {
            c: TokenBucket(r) for c, r in self.cfg.segment_rate_by_carrier.items()
        }
        self._optout_lock = threading.Lock()
        self._optout_checked = 0.0
        self._batch_phones: set[str] = set()
        self._opted_out: set[str] = set()
        self._bodies: dict[int, str] = {}
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
        while not self.stop.is_set():
            now = self.clock()
            if not self.in_hours(now):
                if until_empty:
                    log.info("dispatch.outside_hours", now=now.isoformat())
                    break
                wait = next_allowed(now, self.settings.allowed_hours, self.settings.tz) - now
                self.stop.wait(min(wait.total_seconds(), 60.0))
                continue
            stats = self.run_batch()
            total.add(stats)
            if progress is not None and stats.batches:
                progress(total)
            if stats.claimed == 0 and stats.cancelled == 0:
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
        stats = DispatchStats()
        batch = delivery.claim_batch(self.engine, now=self.clock(), limit=self.cfg.batch_size)
        claimed = batch.claimed
        stats.cancelled = batch.cancelled
        if not claimed:
            return stats
        stats.claimed = len(claimed)
        stats.batches = 1
        missing = [c.body_id for c in claimed if c.body_id not in self._bodies]
        if missing:
            self._bodies.update(delivery.bodies(self.engine, missing))
        # An opt-out committed after the claim (it could not cancel rows already `sending`).
        with self._optout_lock:
            self._batch_phones = {c.phone for c in claimed}
            self._opted_out = delivery.opted_out_among(self.engine, self._batch_phones)
            self._optout_checked = time.monotonic()
        if self.cfg.concurrency == 1:
            outcomes = [self._send_one(c) for c in claimed]
        else:
            outcomes = list(self._pool.map(self._send_one, claimed))
        self._record(outcomes, stats)
        return stats

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
            if o.attempt_outcome == "opt_out":
                stats.opted_out += 1

    # -- one message -------------------------------------------------------------------------

    def _outbound(self, c: Claimed) -> OutboundMessage:
        return OutboundMessage(
            id=c.id,
            phone=c.phone,
            body=self._bodies[c.body_id],
            carrier=c.carrier,
            segments=c.segments,
        )

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

    def _send_one(self, c: Claimed) -> Outcome:
        # Checked before waiting for the rate limiter (no point waiting) and again after it.
        late = self._past_hours(c, self.clock())
        if late is not None:
            return late
        if self.rate_limited:
            bucket = self.carrier_rates.get(c.carrier)
            if not self.rate.take(1, self.stop) or (
                bucket is not None and not bucket.take(c.segments, self.stop)
            ):
                now = self.clock()
                return self._not_sent(c, now, MessageState.QUEUED, "stopped", next_attempt_at=now)
        started = self.clock()
        late = self._past_hours(c, started)
        if late is not None:
            return late
        if self._opted_out_since_claim(c.phone):
            log.info("dispatch.opted_out_since_claim", message_id=c.id, phone=mask(c.phone))
            return self._not_sent(
                c, started, MessageState.CANCELLED, OPTED_OUT, error_code=OPTED_OUT
            )
        msg = self._outbound(c)
        try:
            accepted = self.provider.send(msg)
        except SendError as exc:
            return self._failure(c, msg, exc, started)
        except Exception as exc:  # a bug or an unexpected library error: do not risk resending
            log.exception("dispatch.unexpected", message_id=c.id, phone=mask(c.phone))
            return Outcome(
                c,
                MessageState.UNKNOWN,
                self.clock(),
                "unexpected",
                self.provider.name,
                detail=repr(exc)[:500],
            )
        return self._accepted(c, accepted, at=started)

    def _accepted(
        self,
        c: Claimed,
        accepted: Accepted,
        outcome: str = "sent",
        *,
        at: dt.datetime | None = None,
    ) -> Outcome:
        """`at`: when the message was handed over (its sent_at), if known."""
        final = None
        if accepted.final_status:
            final = delivery.PROVIDER_STATUS.get(accepted.final_status)
        return Outcome(
            c,
            MessageState.SENT,
            at or self.clock(),
            outcome,
            self.provider.name,
            provider_message_id=accepted.provider_message_id,
            error_code=accepted.error_code,
            final_status=final,
        )

    def _failure(
        self, c: Claimed, msg: OutboundMessage, exc: SendError, started: dt.datetime
    ) -> Outcome:
        now = self.clock()
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
                "opt_out" if exc.opt_out else "permanent",
                self.provider.name,
                error_code=exc.code,
                detail=str(exc)[:500],
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
        # One lookup call for them all: the dry-run provider reads its log once, not per message.
        found = self.provider.find_sent_many(lookups)
        outcomes = [
            self._settled(c, f, None, "left sending by a crash", immediate=True)
            for (c, _), f in zip(stuck, found, strict=True)
        ]
        self._record(outcomes, stats)
        return stats
