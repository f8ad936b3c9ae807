"""Delivery receipts pulled from the provider, for messages no push has settled.

A gateway pushes receipts to the service's webhooks, but a district office often sits on a
government intranet that the internet cannot reach, and a push can be lost. So the service
(and `pingan delivery pull`, for a cron job) asks the provider about messages still `sent`
after a while, through the same look-up that settles an uncertain send (`find_sent_many`),
and applies what it says exactly as a pushed receipt (`Callbacks.status`): a status only
moves forward, so a push and a pull of the same receipt count once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass

from scheduler.core import Core
from scheduler.gateway_templates import load_params
from scheduler.logs import get_logger
from scheduler.providers.base import (
    Accepted,
    DeliveryStatus,
    OutboundMessage,
    Provider,
    SendError,
    StatusReport,
)
from scheduler.store import delivery

log = get_logger("scheduler.receipts")

FINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.UNDELIVERED, DeliveryStatus.FAILED})


@dataclass
class ReceiptsPulled:
    looked_up: int = 0
    applied: int = 0
    # The provider has no final status yet (or no record): asked again on a later pull.
    not_final: int = 0
    # The provider could not answer for these (an error of the look-up); asked again later.
    errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def pull_receipts(
    core: Core,
    provider: Provider,
    *,
    older_than: dt.timedelta,
    recheck_after: dt.timedelta,
    limit: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReceiptsPulled:
    """Look up at most `limit` messages sent more than `older_than` ago and not looked up in
    the last `recheck_after`, in batches of the provider's own size, and apply final states."""
    from scheduler.callbacks import Callbacks

    now = core.clock()
    waiting = delivery.awaiting_receipt(
        core.engine,
        provider=provider.name,
        sent_before=now - older_than,
        checked_before=now - recheck_after,
        limit=limit,
    )
    result = ReceiptsPulled()
    if not waiting:
        return result
    bodies = delivery.bodies(core.engine, [c.body_id for c, _ in waiting])
    templates = delivery.body_templates(core.engine, [c.body_id for c, _ in waiting])
    callbacks = Callbacks(core)
    step = 100
    for start in range(0, len(waiting), step):
        chunk = waiting[start : start + step]
        lookups = []
        for c, sent_at in chunk:
            template, params = templates.get(c.body_id, (None, None))
            msg = OutboundMessage(
                id=c.id,
                phone=c.phone,
                body=bodies.get(c.body_id, ""),
                carrier=c.carrier,
                segments=c.segments,
                template=template,
                params=load_params(params, provider.name),
            )
            lookups.append((msg, sent_at - dt.timedelta(seconds=5)))
        found = provider.find_sent_many(lookups)
        unsettled: list[int] = []
        for (c, _), answer in zip(chunk, found, strict=True):
            result.looked_up += 1
            if isinstance(answer, SendError):
                result.errors += 1
                unsettled.append(c.id)
            elif isinstance(answer, Accepted) and answer.status in FINAL:
                callbacks.status(
                    StatusReport(answer.provider_message_id, answer.status, answer.error_code)
                )
                result.applied += 1
            else:
                result.not_final += 1
                unsettled.append(c.id)
        delivery.mark_looked_up(core.engine, unsettled, now=now)
        if on_progress is not None:
            on_progress(result.looked_up, len(waiting))
    log.info("receipts.pulled", provider=provider.name, **result.to_dict())
    return result
