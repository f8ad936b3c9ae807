"""/metrics in Prometheus text format, read from the database at scrape time.

Counts come from the database rather than from counters in the process, so a standby reports
the same figures as the leader, a restart loses nothing, and the dispatcher and expansion need
no hooks: message counts by state, the send rate over the last minute, provider errors by code
(from the attempts), expansion and dispatch durations per occurrence, and whether this node
is the leader.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from scheduler.logs import get_logger
from scheduler.models import Attempt, Message, MessageState, Occurrence

log = get_logger("scheduler.metrics")

RATE_WINDOW = dt.timedelta(seconds=60)
# Expansion of a million recipients takes seconds to a minute; a send run hours.
EXPANSION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0)
DISPATCH_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)


def _histogram(
    name: str, doc: str, values: list[float], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    counts = [(str(b), float(sum(1 for v in values if v <= b))) for b in buckets]
    counts.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=sum(values))


class DatabaseCollector(Collector):
    """Collects at each scrape; a database that does not answer gives pingan_database_up 0."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        *,
        is_leader: Callable[[], bool],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.engine = engine
        self.is_leader = is_leader
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("pingan_leader", "1 on the node that fires and sends")
        leader.add_metric([], 1.0 if self.is_leader() else 0.0)
        yield leader
        up = GaugeMetricFamily("pingan_database_up", "1 when the database answered this scrape")
        try:
            families = list(self._from_database())
        except Exception as exc:
            log.warning("metrics.database_error", error=exc.__class__.__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _from_database(self) -> Iterator[Metric]:
        now = self.clock()
        with self.engine().connect() as conn:
            by_state = dict(
                conn.execute(select(Message.state, func.count()).group_by(Message.state)).all()
            )
            recent = conn.execute(
                select(func.count())
                .select_from(Message)
                .where(Message.sent_at >= now - RATE_WINDOW, Message.sent_at <= now)
            ).scalar_one()
            errors = conn.execute(
                select(Attempt.error_code, func.count())
                .where(Attempt.error_code.is_not(None))
                .group_by(Attempt.error_code)
            ).all()
            occurrences = conn.execute(
                select(Occurrence.created_at, Occurrence.expanded_at, Occurrence.finished_at)
            ).all()
        messages = GaugeMetricFamily(
            "pingan_messages", "Messages in the outbox by state", labels=["state"]
        )
        for state in MessageState:
            messages.add_metric([state.value], float(by_state.get(state, 0)))
        yield messages
        rate = GaugeMetricFamily(
            "pingan_send_rate_per_second", "Messages handed to the provider over the last minute"
        )
        rate.add_metric([], recent / RATE_WINDOW.total_seconds())
        yield rate
        failures = CounterMetricFamily(
            "pingan_provider_errors",
            "Send attempts the provider refused, by error code",
            labels=["code"],
        )
        for code, n in sorted(errors):
            failures.add_metric([str(code)], float(n))
        yield failures
        expansions = [
            (e - c).total_seconds() for c, e, _f in occurrences if c is not None and e is not None
        ]
        dispatches = [
            (f - e).total_seconds() for _c, e, f in occurrences if e is not None and f is not None
        ]
        yield _histogram(
            "pingan_expansion_duration_seconds",
            "From an occurrence's creation to its outbox being filled",
            expansions,
            EXPANSION_BUCKETS,
        )
        yield _histogram(
            "pingan_dispatch_duration_seconds",
            "From an occurrence's outbox being filled to its last message settled",
            dispatches,
            DISPATCH_BUCKETS,
        )


def metrics_registry(
    engine: Callable[[], Engine],
    *,
    is_leader: Callable[[], bool],
    clock: Callable[[], dt.datetime],
) -> CollectorRegistry:
    """A registry of its own per app (several apps in one test process must not collide).

    `engine` is asked at each scrape: a database down at start-up must not stop the app.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, is_leader=is_leader, clock=clock))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
