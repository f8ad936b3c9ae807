"""What a provider tells us after a send, in the neutral vocabulary: delivery receipts and
replies (opt-outs).

A provider's webhook routes verify and translate its pushes, then call these (they are its
`ProviderEvents`); so can tests, the simulator and a provider's pull of receipts.
"""

from __future__ import annotations

import contextlib
from functools import cached_property

from scheduler.core import Core
from scheduler.exceptions import InvalidPhoneNumber
from scheduler.logs import get_logger
from scheduler.phones import mask, normalize
from scheduler.providers.base import InboundReply, StatusReport
from scheduler.replies import ReplyRules, classify, load_reply_rules
from scheduler.store import delivery
from scheduler.store.recipients import record_opt_outs, record_opt_outs_counted

log = get_logger("scheduler.callbacks")


class Callbacks:
    def __init__(self, core: Core) -> None:
        self.core = core

    def status(self, report: StatusReport) -> str:
        """Apply a delivery receipt; a status only moves forward, so duplicates and receipts
        out of order change nothing. Returns applied, unchanged or pending."""
        result = delivery.apply_status(
            self.core.engine,
            report.provider_message_id,
            report.status,
            report.error_code,
            now=self.core.clock(),
            tz=self.core.settings.tz,
        )
        if report.opted_out and report.phone:
            with contextlib.suppress(InvalidPhoneNumber):
                record_opt_outs(
                    self.core.engine,
                    [normalize(report.phone)],
                    source="provider",
                    reason=f"error {report.error_code}",
                    now=self.core.clock(),
                )
        log.info(
            "callback.status",
            sid=report.provider_message_id,
            status=str(report.status),
            error_code=report.error_code,
            result=result,
        )
        return result

    @cached_property
    def reply_rules(self) -> ReplyRules:
        settings = self.core.settings
        extra = settings.opt_out_keywords if "opt_out_keywords" in settings.model_fields_set else []
        return load_reply_rules(settings.config_dir, extra)

    def inbound(self, reply: InboundReply) -> bool:
        """A reply: a refusal (退订, TD, `T.`, `stop please`, 请勿再发, …, config/replies.yaml)
        records an opt-out with the raw reply and cancels what is queued. True if it did."""
        raw = reply.text
        verdict = classify(raw, self.reply_rules)
        if not verdict.opt_out:
            return False
        try:
            phone = normalize(reply.phone)
        except InvalidPhoneNumber:
            log.info("callback.inbound_invalid", sender=mask(reply.phone))
            return False
        new, cancelled = record_opt_outs_counted(
            self.core.engine,
            [phone],
            source="reply",
            reason=verdict.rule,
            reply_text=raw,
            now=self.core.clock(),
        )
        log.info(
            "callback.opt_out", phone=mask(phone), rule=verdict.rule, new=new, cancelled=cancelled
        )
        return True
