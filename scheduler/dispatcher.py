"""The dispatcher: drains the outbox through a provider, exactly once, inside sending hours.

Claimed messages are `sending` in their own commit before any provider call. Each send's
outcome is classified: transient failures go back to the queue with exponential backoff and
jitter (honouring Retry-After); permanent ones stop; an uncertain one (a 5xx or a timeout after
the request went out) is looked up at the provider before anything is sent again, and marked
`unknown` for an operator when the provider cannot tell. On start, messages a crash left in
`sending` are reconciled the same way.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
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
from scheduler.store.recipients import record_opt_outs

log = get_logger("scheduler.dispatcher")


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    unknown: int = 0
    opted_out: int = 0
    batches: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    def add(self, other: DispatchStats) -> None:
        for name in ("claimed", "sent", "retried", "failed", "unknown", "opted_out", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


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
        self.rate = TokenBucket(self.cfg.rate_per_second)
        self.carrier_rates = {
            c: TokenBucket(r) for c, r in self.cfg.segment_rate_by_carrier.items()
        }
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

    def run(self, *, until_empty: bool = False) -> DispatchStats:
        """Send until stopped (or, with until_empty, until nothing is due)."""
        total = DispatchStats()
        total.add(self.reconcile())
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
            if stats.claimed == 0:
                total.add(self.reconcile())
                delivery.finish_occurrences(self.engine, now=self.clock())
                if until_empty:
                    break
                self.stop.wait(self.cfg.poll_seconds)
        delivery.finish_occurrences(self.engine, now=self.clock())
        return total

    def run_batch(self) -> DispatchStats:
        """Claim one batch, send it with bounded concurrency, record every outcome."""
        stats = DispatchStats()
        claimed = delivery.claim_due(self.engine, now=self.clock(), limit=self.cfg.batch_size)
        if not claimed:
            return stats
        stats.claimed = len(claimed)
        stats.batches = 1
        missing = [c.body_id for c in claimed if c.body_id not in self._bodies]
        if missing:
            self._bodies.update(delivery.bodies(self.engine, missing))
        if self.cfg.concurrency == 1:
            outcomes = [self._send_one(c) for c in claimed]
        else:
            outcomes = list(self._pool.map(self._send_one, claimed))
        self._record(outcomes, stats)
        return stats

    def _record(self, outcomes: list[Outcome], stats: DispatchStats) -> None:
        opt_outs = delivery.record_outcomes(self.engine, outcomes, tz=self.settings.tz)
        if opt_outs:
            record_opt_outs(
                self.engine, [p for p, _ in opt_outs], source="provider", reason="provider error"
            )
        for o in outcomes:
            stats.by_outcome[o.attempt_outcome] = stats.by_outcome.get(o.attempt_outcome, 0) + 1
            if o.state == MessageState.SENT:
                stats.sent += 1
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

    def _send_one(self, c: Claimed) -> Outcome:
        if not self.rate.take(1, self.stop):
            return self._requeue(c, self.clock(), "stopped", None, 0.0, count_attempt=False)
        bucket = self.carrier_rates.get(c.carrier)
        if bucket is not None and not bucket.take(c.segments, self.stop):
            return self._requeue(c, self.clock(), "stopped", None, 0.0, count_attempt=False)
        started = self.clock()
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
        return self._accepted(c, accepted)

    def _accepted(self, c: Claimed, accepted: Accepted, outcome: str = "sent") -> Outcome:
        final = None
        if accepted.final_status:
            final = delivery.PROVIDER_STATUS.get(accepted.final_status)
        return Outcome(
            c,
            MessageState.SENT,
            self.clock(),
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
        *,
        immediate: bool = False,
    ) -> Outcome:
        """The provider may have the message: look before anything is sent again."""
        try:
            found = self.provider.find_sent(msg, since - dt.timedelta(seconds=5))
        except SendError as exc:
            log.warning("dispatch.unknown", message_id=c.id, phone=mask(c.phone), code=code)
            return Outcome(
                c,
                MessageState.UNKNOWN,
                self.clock(),
                "unknown",
                self.provider.name,
                error_code=code,
                detail=f"{detail}; lookup: {exc}"[:500],
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
        outcomes = []
        for c, since in stuck:
            outcomes.append(
                self._settle_uncertain(
                    c,
                    self._outbound(c),
                    since or self.clock(),
                    None,
                    "left sending by a crash",
                    immediate=True,
                )
            )
        self._record(outcomes, stats)
        return stats
