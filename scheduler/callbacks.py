"""What the provider tells us after a send: delivery statuses and replies (opt-outs).

The HTTP layer validates signatures and calls these; so can tests and the simulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from functools import cached_property

from scheduler.core import Core
from scheduler.exceptions import InvalidPhoneNumber
from scheduler.logs import get_logger
from scheduler.phones import mask, normalize
from scheduler.providers.base import error_catalogue
from scheduler.replies import ReplyRules, classify, load_reply_rules
from scheduler.store import delivery
from scheduler.store.recipients import record_opt_outs, record_opt_outs_counted

log = get_logger("scheduler.callbacks")


class Callbacks:
    def __init__(self, core: Core) -> None:
        self.core = core

    @cached_property
    def opt_out_codes(self) -> frozenset[str]:
        return frozenset(
            code
            for code, info in error_catalogue(self.core.settings.config_dir).items()
            if info.opt_out
        )

    def status(self, form: Mapping[str, str]) -> str:
        """Apply a status callback (MessageSid, MessageStatus, ErrorCode); status only moves on."""
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        code = form.get("ErrorCode") or None
        if not sid or not status:
            return "ignored"
        result = delivery.apply_status(
            self.core.engine,
            sid,
            status,
            code,
            now=self.core.clock(),
            tz=self.core.settings.tz,
        )
        if code and code in self.opt_out_codes:
            phone = form.get("To", "")
            with contextlib.suppress(InvalidPhoneNumber):
                record_opt_outs(
                    self.core.engine,
                    [normalize(phone)],
                    source="provider",
                    reason=f"error {code}",
                    now=self.core.clock(),
                )
        log.info("callback.status", sid=sid, status=status, error_code=code, result=result)
        return result

    @cached_property
    def reply_rules(self) -> ReplyRules:
        settings = self.core.settings
        extra = settings.opt_out_keywords if "opt_out_keywords" in settings.model_fields_set else []
        return load_reply_rules(settings.config_dir, extra)

    def inbound(self, form: Mapping[str, str]) -> bool:
        """A reply: a refusal (退订, TD, `T.`, `stop please`, 请勿再发, …, config/replies.yaml)
        records an opt-out with the raw reply and cancels what is queued. True if it did."""
        raw = form.get("Body") or ""
        verdict = classify(raw, self.reply_rules)
        if not verdict.opt_out:
            return False
        try:
            phone = normalize(form.get("From") or "")
        except InvalidPhoneNumber:
            log.info("callback.inbound_invalid", sender=mask(form.get("From") or ""))
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
