"""Tencent Cloud SMS, through the official `tencentcloud-sdk-python-sms` client (API 2021-01-11).

Tencent sends only approved templates: each message goes out as its template code (from
config/gateway_templates.yaml) with its positional parameters ({1}, {2}, …) and the approved
signature, which Tencent adds itself. SendSms takes up to 200 numbers sharing one template and
one set of values, and answers per number (SendStatusSet): so a batch is grouped by template
and values, each number's result is that message's, and its SerialNo is the id receipts name.

SessionContext (returned as-is in SendStatusSet and in status pulls) carries the ids of our
messages in that call, delta-encoded in base 36 within Tencent's 512 bytes (a call holds fewer
numbers when the ids do not fit): after an uncertain send or a crash, `find_sent` pulls the
number's status reports (PullSmsSendStatusByPhoneNumber) and finds the one whose context names
our message. A number appears at most once per call, so each SendStatus maps to one message.

The SDK's HTTP session gets a timeout and no retries (a re-POST after a lost answer would send
twice); its errors are classified by config/tencent_errors.yaml. A ClientNetworkError is
never-sent only when the connection failed before the request left; a timeout after it, an
HTTP 5xx (ServerNetworkError), an unreadable answer or an InternalError.* is uncertain. One
client per thread (requests sessions are not shared). Webhooks: tencent_webhooks.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sms.v20210111 import models, sms_client

from scheduler.exceptions import SettingsError
from scheduler.gateway_templates import GatewayTemplates, load_gateway_templates
from scheduler.phones import e164, mask
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
from scheduler.settings import Settings, TencentSettings

if TYPE_CHECKING:
    from fastapi import APIRouter

ERRORS_FILE = "tencent_errors.yaml"
GATEWAY = "tencent"
MAX_NUMBERS = 200  # SendSms's limit per call
SESSION_BYTES = 511  # SessionContext must be shorter than 512 bytes
SESSION_PREFIX = "pa1:"
PULL_LIMIT = 100  # PullSmsSendStatusByPhoneNumber's page size limit
# Tencent's report statuses in the neutral vocabulary.
STATUS = {"SUCCESS": DeliveryStatus.DELIVERED, "FAIL": DeliveryStatus.UNDELIVERED}
STATUS_PATH = "/webhooks/tencent/status"
REPLY_PATH = "/webhooks/tencent/reply"


# -- SessionContext: the message ids of one call --------------------------------------------


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def encode_ids(ids: Sequence[int]) -> str:
    """`pa1:` then the first id and each later id's distance from the one before, base 36."""
    ordered = sorted(ids)
    parts = [_b36(ordered[0])] + [_b36(b - a) for a, b in itertools.pairwise(ordered)]
    return SESSION_PREFIX + ".".join(parts)


def decode_ids(context: str | None) -> set[int] | None:
    """The ids a SessionContext names; None when it is not one of ours (empty, foreign)."""
    if not context or not context.startswith(SESSION_PREFIX):
        return None
    try:
        steps = [int(p, 36) for p in context[len(SESSION_PREFIX) :].split(".")]
    except ValueError:
        return None
    return set(itertools.accumulate(steps))


def plan_calls(msgs: Sequence[OutboundMessage]) -> list[list[OutboundMessage]]:
    """Split messages sharing a template and values into SendSms calls: at most 200 numbers,
    each number once, and the ids' SessionContext within its 512 bytes."""
    pending = sorted(msgs, key=lambda m: m.id)
    calls: list[list[OutboundMessage]] = []
    while pending:
        call: list[OutboundMessage] = []
        phones: set[str] = set()
        length = len(SESSION_PREFIX)
        prev: int | None = None
        rest: list[OutboundMessage] = []
        for m in pending:
            step = len(_b36(m.id)) if prev is None else 1 + len(_b36(m.id - prev))
            if m.phone in phones or len(call) >= MAX_NUMBERS or length + step > SESSION_BYTES:
                rest.append(m)
                continue
            call.append(m)
            phones.add(m.phone)
            length += step
            prev = m.id
        calls.append(call)
        pending = rest
    return calls


def positional(params: Mapping[str, str]) -> list[str]:
    """Tencent's TemplateParamSet: the values of parameters "1", "2", … "10" in that order."""
    return [params[k] for k in sorted(params, key=lambda k: (len(k), k))]


class TencentProvider(Provider):
    name = "tencent"
    max_batch = MAX_NUMBERS
    uses_templates = True

    @classmethod
    def from_settings(cls, settings: Settings) -> TencentProvider:
        return cls(settings.tencent, load_gateway_templates(settings.config_dir), settings)

    @classmethod
    def catalogue_file(cls, config_dir: Path) -> Path | None:
        return config_dir / ERRORS_FILE

    @classmethod
    def signature_setting(cls, settings: Settings) -> tuple[str, str] | None:
        return "PINGAN_TENCENT__SIGN_NAME", settings.tencent.sign_name

    @classmethod
    def webhook_router(cls, settings: Settings, events: ProviderEvents) -> APIRouter | None:
        from scheduler.providers.tencent_webhooks import tencent_router

        return tencent_router(settings, events, cls.catalogue(settings.config_dir))

    def __init__(
        self, cfg: TencentSettings, templates: GatewayTemplates, settings: Settings
    ) -> None:
        missing = [
            f"PINGAN_TENCENT__{name.upper()}"
            for name, value in (
                ("secret_id", cfg.secret_id),
                ("secret_key", cfg.secret_key.get_secret_value()),
                ("sdk_app_id", cfg.sdk_app_id),
                ("sign_name", cfg.sign_name),
            )
            if not value
        ]
        if missing:
            raise SettingsError(f"provider tencent needs {', '.join(missing)}")
        self.cfg = cfg
        self.templates = templates
        self.errors: dict[str, ErrorInfo] = self.catalogue(settings.config_dir)
        self._local = threading.local()
        self._clients: list[sms_client.SmsClient] = []
        self._lock = threading.Lock()

    def _client(self) -> sms_client.SmsClient:
        client: sms_client.SmsClient | None = getattr(self._local, "client", None)
        if client is None:
            http = HttpProfile(
                endpoint=self.cfg.endpoint,
                protocol=self.cfg.protocol,
                reqMethod="POST",
                reqTimeout=self.cfg.timeout_seconds,
                keepAlive=True,
            )
            cred = credential.Credential(self.cfg.secret_id, self.cfg.secret_key.get_secret_value())
            client = sms_client.SmsClient(cred, self.cfg.region, ClientProfile(httpProfile=http))
            # No proxy from the environment, and no retry: the SDK's session is plain requests.
            conn = client.request.conn
            conn.proxy = None
            conn._session.trust_env = False
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    # -- sending -----------------------------------------------------------------------------

    def send(self, msg: OutboundMessage) -> Accepted:
        [result] = self.send_batch([msg])
        if isinstance(result, SendError):
            raise result
        return result

    def send_batch(self, msgs: Sequence[OutboundMessage]) -> list[Accepted | SendError]:
        results: dict[int, Accepted | SendError] = {}
        groups: dict[tuple[str, tuple[str, ...]], list[OutboundMessage]] = {}
        for m in msgs:
            try:
                code, params = template_code(m, self.templates, GATEWAY)
            except SendError as exc:
                results[m.id] = exc
                continue
            groups.setdefault((code, tuple(positional(params))), []).append(m)
        for (code, values), group in groups.items():
            for call in plan_calls(group):
                results.update(self._send_call(code, list(values), call))
        return [results[m.id] for m in msgs]

    def _send_call(
        self, template: str, values: list[str], call: Sequence[OutboundMessage]
    ) -> dict[int, Accepted | SendError]:
        req = models.SendSmsRequest()
        req.PhoneNumberSet = [e164(m.phone) for m in call]
        req.SmsSdkAppId = self.cfg.sdk_app_id
        req.SignName = self.cfg.sign_name
        req.TemplateId = template
        req.TemplateParamSet = values
        req.SessionContext = encode_ids([m.id for m in call])
        try:
            resp = self._client().SendSms(req)
        except TencentCloudSDKException as exc:
            err = self._classify(exc)
            return {m.id: err for m in call}
        except (ValueError, KeyError, TypeError) as exc:  # an answer that cannot be read
            err = SendError(f"unreadable SendSms answer: {exc!r}", kind=ErrorKind.UNCERTAIN)
            return {m.id: err for m in call}
        by_phone = {str(s.PhoneNumber): s for s in resp.SendStatusSet or []}
        out: dict[int, Accepted | SendError] = {}
        for m in call:
            status = by_phone.get(e164(m.phone))
            if status is None:
                out[m.id] = SendError(
                    f"SendSms answered nothing for {mask(m.phone)}", kind=ErrorKind.UNCERTAIN
                )
            elif str(status.Code) == "Ok" and status.SerialNo:
                out[m.id] = Accepted(str(status.SerialNo))
            elif str(status.Code) == "Ok":  # taken, but no id to find it by: look it up
                out[m.id] = SendError(
                    f"SendSms took {mask(m.phone)} without a SerialNo", kind=ErrorKind.UNCERTAIN
                )
            else:
                out[m.id] = self._coded(str(status.Code), str(status.Message or ""))
        return out

    def _classify(self, exc: TencentCloudSDKException) -> SendError:
        code = str(exc.get_code() or "")
        text = f"Tencent error {code}: {exc.get_message()}"
        if code == "ClientNetworkError":
            if _never_sent(exc.__context__):
                return SendError(text, kind=ErrorKind.TRANSIENT, code=code[:64])
            return SendError(text, kind=ErrorKind.UNCERTAIN, code=code[:64])
        if code == "ServerNetworkError":  # an HTTP status other than 200: 5xx, a proxy's page
            return SendError(text[:500], kind=ErrorKind.UNCERTAIN, code=code)
        return self._coded(code, str(exc.get_message() or ""))

    def _coded(self, code: str, message: str) -> SendError:
        """A Tencent error code (of the call or of one number) as a SendError."""
        info = self.errors.get(code)
        text = f"Tencent error {code}: {message}"
        if info is None:
            kind = ErrorKind.UNCERTAIN if code.startswith("InternalError") else ErrorKind.PERMANENT
            return SendError(text, kind=kind, code=code[:64])
        kind = ErrorKind.TRANSIENT if info.kind == "transient" else ErrorKind.PERMANENT
        return SendError(
            text,
            kind=kind,
            code=code,
            retry_after=info.retry_after_seconds if kind == ErrorKind.TRANSIENT else None,
            opted_out=info.opt_out,
            halt=info.halt,
            meaning=info.meaning,
        )

    # -- looking up --------------------------------------------------------------------------

    def _pull(self, phone: str, since: dt.datetime) -> list[Any]:
        """Every status report of `phone` since `since` (all pages)."""
        client = self._client()
        found: list[Any] = []
        offset = 0
        while True:
            req = models.PullSmsSendStatusByPhoneNumberRequest()
            req.PhoneNumber = e164(phone)
            req.SmsSdkAppId = self.cfg.sdk_app_id
            req.BeginTime = int(since.timestamp())
            req.EndTime = int(time.time()) + 60
            req.Offset = offset
            req.Limit = PULL_LIMIT
            try:
                resp = client.PullSmsSendStatusByPhoneNumber(req)
            except (TencentCloudSDKException, ValueError, KeyError, TypeError) as exc:
                raise SendError(
                    f"cannot look up messages to {mask(phone)}: {exc}", kind=ErrorKind.UNCERTAIN
                ) from None
            page = list(resp.PullSmsSendStatusSet or [])
            found.extend(page)
            if len(page) < PULL_LIMIT:
                return found
            offset += PULL_LIMIT

    @staticmethod
    def _match(msg: OutboundMessage, reports: Sequence[Any]) -> Accepted | None:
        for r in reports:
            ids = decode_ids(r.SessionContext)
            # A report without context (Tencent returns it only once enabled for the account)
            # cannot be told apart: it is taken as this message rather than risk a duplicate.
            if ids is None and r.SessionContext:
                continue
            if ids is None or msg.id in ids:
                status = STATUS.get(str(r.ReportStatus), DeliveryStatus.SENT)
                return Accepted(str(r.SerialNo), status)
        return None

    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        [found] = self.find_sent_many([(msg, since)])
        if isinstance(found, SendError):
            raise found
        return found

    def find_sent_many(
        self, lookups: Sequence[tuple[OutboundMessage, dt.datetime]]
    ) -> list[Accepted | SendError | None]:
        """One pull per number (a number's messages share it), from its earliest `since`;
        numbers with a message not found are pulled again once its report could have come
        (`report_wait_seconds` after the send), before it is concluded unsent."""
        out: list[Accepted | SendError | None] = self._lookup_once(lookups)
        wait = self.cfg.report_wait_seconds
        # `since` is a little before the hand-over (the dispatcher's margin), on its clock.
        due = [
            since.timestamp() + wait - time.time()
            for (_, since), found in zip(lookups, out, strict=True)
            if found is None
        ]
        pending = [d for d in due if d > 0]
        if pending:
            time.sleep(min(max(pending), wait))
            again = [i for i, found in enumerate(out) if found is None]
            for i, found in zip(again, self._lookup_once([lookups[i] for i in again]), strict=True):
                out[i] = found
        return out

    def _lookup_once(
        self, lookups: Sequence[tuple[OutboundMessage, dt.datetime]]
    ) -> list[Accepted | SendError | None]:
        earliest: dict[str, dt.datetime] = {}
        for msg, since in lookups:
            earliest[msg.phone] = min(since, earliest.get(msg.phone, since))
        pulled: dict[str, list[Any] | SendError] = {}
        for phone, since in earliest.items():
            try:
                pulled[phone] = self._pull(phone, since)
            except SendError as exc:
                pulled[phone] = exc
        out: list[Accepted | SendError | None] = []
        for msg, _ in lookups:
            reports = pulled[msg.phone]
            out.append(reports if isinstance(reports, SendError) else self._match(msg, reports))
        return out

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                c.request.conn._session.close()
            self._clients.clear()


def _never_sent(cause: BaseException | None) -> bool:
    """True when the connection failed before any byte of the request left."""
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(cause, requests.exceptions.ReadTimeout):
        return False
    text = repr(cause)
    return any(
        marker in text for marker in ("NewConnectionError", "Connection refused", "NameResolution")
    )
