"""Alibaba Cloud SMS (阿里云短信服务), through the official SDK (alibabacloud_dysmsapi20170525).

The gateway sends only approved templates: each message goes as the gateway template code
that config/gateway_templates.yaml maps our template to, with the parameter values stored on
its body at expansion, under the signature name PINGAN_ALIYUN__SIGN_NAME (the gateway adds
【签名】 itself; our stored text keeps it for segment counting).

Batches and ids. SendBatchSms takes up to 100 numbers with one template code, one OutId and
answers one BizId for the whole call; per-number outcomes arrive only in receipts. So a
`send_batch` groups its messages by template code, sorts each group by message id and sends
it in calls of at most 100 distinct numbers (a number twice goes in another call). The
call's OutId is its first (smallest) message id, and each message's provider id is
`<OutId>:<tag>`, the tag a hash of its number: the gateway's receipts and QuerySendDetails
records both carry OutId and number, so either maps back to exactly one message without a
table of BizIds and without a phone number in the id. A batch refused for one number (an
illegal number, a per-number frequency limit) sent nothing, so its numbers are sent again
one by one (SendSms, OutId = the message id) to find which; a refusal of the template,
signature or account is every message's.

Lookups after an uncertain send or a crash use QuerySendDetails (by number and day; OutId is
not a filter there): a record of the same template code, our OutId at most the message's id,
every parameter value in its content and sent since the claim is the message.

Errors are classified by config/aliyun_errors.yaml; the SDK makes one attempt per call (no
retries: a re-POST after a lost answer would send twice) and its exceptions are mapped the
way the Twilio provider maps its client's: refused before the request left → transient; a
5xx or a lost answer → uncertain. Its webhooks are in scheduler.providers.aliyun_webhooks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo

from alibabacloud_dysmsapi20170525 import models as sms
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi import models as openapi
from alibabacloud_tea_openapi.exceptions import (
    AlibabaCloudException,
    ServerException,
    ThrottlingException,
)
from darabonba.runtime import RuntimeOptions

from scheduler.exceptions import SettingsError
from scheduler.gateway_templates import GatewayTemplates, load_gateway_templates
from scheduler.phones import mask
from scheduler.providers.base import (
    Accepted,
    DeliveryStatus,
    ErrorInfo,
    ErrorKind,
    OutboundMessage,
    Provider,
    ProviderEvents,
    SendError,
    template_code,
)
from scheduler.settings import AliyunSettings, Settings

if TYPE_CHECKING:
    from fastapi import APIRouter

ERRORS_FILE = "aliyun_errors.yaml"
STATUS_PATH = "/webhooks/aliyun/status"
INBOUND_PATH = "/webhooks/aliyun/inbound"
# SendBatchSms takes at most 100 numbers per call.
MAX_BATCH = 100
# QuerySendDetails answers at most 50 records a page.
PAGE_SIZE = 50
CHINA = ZoneInfo("Asia/Shanghai")
# QuerySendDetails' SendStatus: 1 waiting for the receipt, 2 failed, 3 delivered.
PULLED_STATUS = {
    1: DeliveryStatus.SENT,
    2: DeliveryStatus.UNDELIVERED,
    3: DeliveryStatus.DELIVERED,
}
# A batch refused with one of these was refused for some number in it, not for the batch.
PER_NUMBER = frozenset(
    {
        "isv.MOBILE_NUMBER_ILLEGAL",
        "isv.BUSINESS_LIMIT_CONTROL",
        "isv.DAY_LIMIT_CONTROL",
        "isv.DOMESTIC_NUMBER_NOT_SUPPORTED",
    }
)
# Failed connections whose request never left (safe to send again).
NEVER_SENT = (
    "NewConnectionError",
    "Connection refused",
    "ConnectTimeout",
    "connect timeout",
    "NameResolution",
    "Failed to resolve",
)


def phone_tag(phone: str) -> str:
    """The number's part of a provider id: a hash, so ids name no number."""
    return hashlib.sha256(phone.encode()).hexdigest()[:12]


def provider_id(out_id: str, phone: str) -> str:
    return f"{out_id}:{phone_tag(phone)}"


class AliyunProvider(Provider):
    name = "aliyun"
    max_batch = MAX_BATCH
    uses_templates: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: Settings) -> AliyunProvider:
        return cls(settings.aliyun, settings)

    @classmethod
    def catalogue_file(cls, config_dir: Path) -> Path | None:
        return config_dir / ERRORS_FILE

    @classmethod
    def signature_setting(cls, settings: Settings) -> tuple[str, str] | None:
        return "PINGAN_ALIYUN__SIGN_NAME", settings.aliyun.sign_name

    @classmethod
    def webhook_router(cls, settings: Settings, events: ProviderEvents) -> APIRouter | None:
        from scheduler.providers.aliyun_webhooks import aliyun_router

        return aliyun_router(settings, events, cls.catalogue(settings.config_dir))

    def __init__(self, cfg: AliyunSettings, settings: Settings) -> None:
        missing = [
            f"PINGAN_ALIYUN__{name.upper()}"
            for name, value in (
                ("access_key_id", cfg.access_key_id),
                ("access_key_secret", cfg.access_key_secret.get_secret_value()),
                ("sign_name", cfg.sign_name),
            )
            if not value
        ]
        if missing:
            raise SettingsError(f"provider aliyun needs {', '.join(missing)}")
        self.cfg = cfg
        self.max_batch = cfg.batch_size
        self.errors: dict[str, ErrorInfo] = self.catalogue(settings.config_dir)
        self.templates: GatewayTemplates = load_gateway_templates(settings.config_dir)
        self._pool_size = max(4, settings.dispatch.concurrency)
        self._local = threading.local()

    # -- the SDK ---------------------------------------------------------------------------

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            ms = int(self.cfg.timeout_seconds * 1000)
            client = Client(
                openapi.Config(
                    access_key_id=self.cfg.access_key_id,
                    access_key_secret=self.cfg.access_key_secret.get_secret_value(),
                    endpoint=self.cfg.endpoint,
                    protocol=self.cfg.protocol,
                    read_timeout=ms,
                    connect_timeout=ms,
                    max_idle_conns=self._pool_size,
                )
            )
            self._local.client = client
        return client

    def _runtime(self) -> RuntimeOptions:
        # One attempt per call: autoretry off (the SDK's default, said again here).
        ms = int(self.cfg.timeout_seconds * 1000)
        return RuntimeOptions(autoretry=False, read_timeout=ms, connect_timeout=ms)

    # -- sending ---------------------------------------------------------------------------

    def send(self, msg: OutboundMessage) -> Accepted:
        code, params = template_code(msg, self.templates, self.name)
        out_id = str(msg.id)
        request = sms.SendSmsRequest(
            phone_numbers=msg.phone,
            sign_name=self.cfg.sign_name,
            template_code=code,
            template_param=_param_json(params),
            out_id=out_id,
        )
        try:
            response = self._client().send_sms_with_options(request, self._runtime())
        except Exception as exc:
            raise self._classify_exception(exc) from None
        body = response.body
        if body is None or body.code != "OK":
            raise self._classify_code(body.code if body else None, body.message if body else "")
        return Accepted(provider_id(out_id, msg.phone))

    def send_batch(self, msgs: Sequence[OutboundMessage]) -> list[Accepted | SendError]:
        """One SendBatchSms per template code and up to 100 distinct numbers (see the module
        docstring); a result per message, in order."""
        results: dict[int, Accepted | SendError] = {}
        groups: dict[str, list[tuple[OutboundMessage, Mapping[str, str]]]] = defaultdict(list)
        for msg in msgs:
            try:
                code, params = template_code(msg, self.templates, self.name)
            except SendError as exc:
                results[msg.id] = exc
                continue
            groups[code].append((msg, params))
        for code, group in groups.items():
            for call in _calls(sorted(group, key=lambda mp: mp[0].id), self.max_batch):
                results.update(self._send_call(code, call))
        return [results[m.id] for m in msgs]

    def _send_call(
        self, code: str, call: list[tuple[OutboundMessage, Mapping[str, str]]]
    ) -> dict[int, Accepted | SendError]:
        if len(call) == 1:
            msg = call[0][0]
            try:
                return {msg.id: self.send(msg)}
            except SendError as exc:
                return {msg.id: exc}
        out_id = str(call[0][0].id)
        with_params = any(params for _, params in call)
        request = sms.SendBatchSmsRequest(
            phone_number_json=json.dumps([m.phone for m, _ in call]),
            sign_name_json=json.dumps([self.cfg.sign_name] * len(call), ensure_ascii=False),
            template_code=code,
            template_param_json=json.dumps([dict(p) for _, p in call], ensure_ascii=False)
            if with_params
            else None,
            out_id=out_id,
        )
        error: SendError
        try:
            response = self._client().send_batch_sms_with_options(request, self._runtime())
        except Exception as exc:
            error = self._classify_exception(exc)
        else:
            body = response.body
            if body is not None and body.code == "OK":
                return {m.id: Accepted(provider_id(out_id, m.phone)) for m, _ in call}
            code_ = body.code if body else None
            if code_ in PER_NUMBER:
                # Refused as a whole for some number in it: nothing went out; find which.
                return self._one_by_one(call)
            error = self._classify_code(code_, body.message if body else "")
        return {m.id: error for m, _ in call}

    def _one_by_one(
        self, call: list[tuple[OutboundMessage, Mapping[str, str]]]
    ) -> dict[int, Accepted | SendError]:
        out: dict[int, Accepted | SendError] = {}
        for msg, _ in call:
            try:
                out[msg.id] = self.send(msg)
            except SendError as exc:
                out[msg.id] = exc
        return out

    # -- classifying -----------------------------------------------------------------------

    def _classify_code(self, code: str | None, message: str | None) -> SendError:
        """An answer the gateway gave (HTTP 200 with a Code other than OK, or a 4xx)."""
        code = code or "UNKNOWN"
        info = self.errors.get(code)
        text = f"Aliyun {code}: {message or ''}".strip()
        if info is None and code.startswith("isp."):
            # The gateway's own fault: it may or may not have taken the message.
            return SendError(text, kind=ErrorKind.UNCERTAIN, code=code)
        kind = ErrorKind.TRANSIENT if info and info.kind == "transient" else ErrorKind.PERMANENT
        return SendError(
            text,
            kind=kind,
            code=code,
            retry_after=info.retry_after_seconds if info and kind == ErrorKind.TRANSIENT else None,
            opted_out=bool(info and info.opt_out),
            halt=bool(info and info.halt),
            meaning=info.meaning if info else "",
        )

    def _classify_exception(self, exc: Exception) -> SendError:
        if isinstance(exc, ThrottlingException):
            error = self._classify_code(exc.code or "Throttling.User", exc.message)
            wait = float(exc.retry_after) / 1000 if exc.retry_after else None
            return SendError(
                str(error),
                kind=ErrorKind.TRANSIENT,
                code=error.code,
                http_status=exc.status_code,
                retry_after=wait or error.retry_after,
                meaning=error.meaning,
            )
        if isinstance(exc, ServerException):
            return SendError(
                f"HTTP {exc.status_code}, Aliyun {exc.code}: {exc.message}",
                kind=ErrorKind.UNCERTAIN,
                code=exc.code,
                http_status=exc.status_code,
            )
        if isinstance(exc, AlibabaCloudException):
            error = self._classify_code(exc.code, exc.message)
            error.http_status = exc.status_code
            return error
        inner = getattr(exc, "inner_exception", None) or exc
        text = f"{type(inner).__name__}: {inner}"
        if any(marker in text for marker in NEVER_SENT):
            return SendError(f"connection refused: {text}", kind=ErrorKind.TRANSIENT)
        return SendError(f"no answer after sending: {text}", kind=ErrorKind.UNCERTAIN)

    # -- lookups ---------------------------------------------------------------------------

    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        found = self.find_sent_many([(msg, since)])[0]
        if isinstance(found, SendError):
            raise found
        return found

    def find_sent_many(
        self, lookups: Sequence[tuple[OutboundMessage, dt.datetime]]
    ) -> list[Accepted | SendError | None]:
        """One QuerySendDetails pass per number (every day since the earliest claim), each
        record matched to at most one message."""
        by_phone: dict[str, list[int]] = defaultdict(list)
        for i, (msg, _) in enumerate(lookups):
            by_phone[msg.phone].append(i)
        out: list[Accepted | SendError | None] = [None] * len(lookups)

        def settle(phone: str) -> None:
            indexes = by_phone[phone]
            since = min(lookups[i][1] for i in indexes)
            try:
                records = self._records(phone, since)
            except SendError as exc:
                for i in indexes:
                    out[i] = exc
                return
            used: set[int] = set()
            for i in sorted(indexes, key=lambda i: lookups[i][0].id):
                msg, msg_since = lookups[i]
                out[i] = self._match(msg, msg_since, records, used)

        phones = list(by_phone)
        if len(phones) == 1:
            settle(phones[0])
        else:
            with ThreadPoolExecutor(min(8, len(phones)), thread_name_prefix="aliyun-q") as pool:
                list(pool.map(settle, phones))
        return out

    def _records(self, phone: str, since: dt.datetime) -> list[Any]:
        """Every record of messages to `phone` on each day since `since` (China time)."""
        # A message goes out right after its claim (`since`): on the claim's day, or the next
        # when claimed just before midnight. Records are kept 30 days, so a crash found days
        # later is still settled.
        day = since.astimezone(CHINA).date()
        last = max(day, min(dt.datetime.now(CHINA).date(), day + dt.timedelta(days=1)))
        records: list[Any] = []
        while day <= last:
            page = 1
            while True:
                request = sms.QuerySendDetailsRequest(
                    phone_number=phone,
                    send_date=day.strftime("%Y%m%d"),
                    page_size=PAGE_SIZE,
                    current_page=page,
                )
                try:
                    response = self._client().query_send_details_with_options(
                        request, self._runtime()
                    )
                except Exception as exc:
                    raise SendError(
                        f"cannot look up messages to {mask(phone)}: {exc}",
                        kind=ErrorKind.UNCERTAIN,
                    ) from None
                body = response.body
                if body is None or body.code != "OK":
                    raise SendError(
                        f"cannot look up messages to {mask(phone)}: "
                        f"{body.code if body else None} {body.message if body else ''}",
                        kind=ErrorKind.UNCERTAIN,
                    )
                dtos = body.sms_send_detail_dtos
                rows = list(dtos.sms_send_detail_dto or []) if dtos else []
                records.extend(rows)
                if len(rows) < PAGE_SIZE or page * PAGE_SIZE >= int(body.total_count or 0):
                    break
                page += 1
            day += dt.timedelta(days=1)
        return records

    def _match(
        self,
        msg: OutboundMessage,
        since: dt.datetime,
        records: Sequence[Any],
        used: set[int],
    ) -> Accepted | None:
        mapping = self.templates.get(self.name, msg.template) if msg.template else None
        if mapping is None:
            return None
        values = list((msg.params or {}).values())
        for n, r in enumerate(records):
            if n in used or r.template_code != mapping.code:
                continue
            if not (r.out_id or "").isdigit() or int(r.out_id) > msg.id:
                continue
            if any(v not in (r.content or "") for v in values):
                continue
            sent = _parse_time(r.send_date)
            if sent is not None and sent < since:
                continue
            used.add(n)
            status = PULLED_STATUS.get(int(r.send_status or 1), DeliveryStatus.SENT)
            return Accepted(provider_id(r.out_id, msg.phone), status)
        return None


def _calls(
    group: list[tuple[OutboundMessage, Mapping[str, str]]], size: int
) -> list[list[tuple[OutboundMessage, Mapping[str, str]]]]:
    """Calls of at most `size` messages, each number at most once per call."""
    calls: list[list[tuple[OutboundMessage, Mapping[str, str]]]] = []
    phones: list[set[str]] = []
    for item in group:
        for call, seen in zip(calls, phones, strict=True):
            if len(call) < size and item[0].phone not in seen:
                call.append(item)
                seen.add(item[0].phone)
                break
        else:
            calls.append([item])
            phones.append({item[0].phone})
    return calls


def _param_json(params: Mapping[str, str]) -> str | None:
    return json.dumps(dict(params), ensure_ascii=False) if params else None


def _parse_time(value: str | None) -> dt.datetime | None:
    """The gateway's `2022-10-10 09:30:00` (China time)."""
    try:
        return dt.datetime.strptime(value or "", "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        return None
