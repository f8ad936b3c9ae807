"""A fake Alibaba Cloud SMS API (dysmsapi 2017-05-25) for tests and benchmarks, on 127.0.0.1.

It answers the official SDK's RPC requests (POST / with Action, the signature v1 parameters
in the query and the form body) for SendSms, SendBatchSms and QuerySendDetails with the
gateway's JSON, verifying the HMAC-SHA1 signature when given the AccessKey pairs to accept
(by default any key is accepted and the signature is only required to be present). Every
template code is accepted unless told otherwise.

It keeps what it "sent" and counts sends per number and per (number, template, parameters),
so a test can prove nothing was sent twice; with a receipt URL it pushes receipts (a JSON
array, as the gateway's SmsReport push) and replies (SmsUp) there, duplicated and out of
order on request; without one, a sent message is reported delivered when looked up by pull.

Faults, each a share of calls (rolled per call): Throttling.User (HTTP 400, nothing sent),
HTTP 500 after accepting, no answer within the client's timeout after accepting; and per
number a daily limit (isv.DAY_LIMIT_CONTROL), numbers that are not mobile numbers
(isv.MOBILE_NUMBER_ILLEGAL) and unapproved template codes (isv.SMS_TEMPLATE_ILLEGAL).

Run in a thread (`running_fake_aliyun`) or as its own process:
    python -m scheduler.testing.fake_aliyun --port 8766 --receipt-url URL --latency-ms 20
with GET /_fake/stats for its counters, POST /_fake/release to end a --hold-after, and POST
/_fake/reply {"phone", "content"} to push a resident's reply to --reply-url.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

CHINA = ZoneInfo("Asia/Shanghai")
MOBILE = re.compile(r"^1[3-9]\d{9}$")
MAX_BATCH = 100
MAX_SEND_SMS = 1000


@dataclass
class FakeConfig:
    # AccessKeyId → secret to verify signatures with; None accepts any key.
    keys: dict[str, str] | None = None
    throttle: float = 0.0
    # Milliseconds in x-acs-retry-after with a throttling answer (0: none sent).
    retry_after_ms: int = 0
    fail_500_after_accept: float = 0.0
    timeout_after_accept: float = 0.0
    timeout_seconds: float = 2.0
    # Sends one number takes a day before isv.DAY_LIMIT_CONTROL (None: no limit).
    daily_limit: int | None = None
    unapproved_templates: set[str] = field(default_factory=set)
    undelivered_share: float = 0.0
    seed: int = 7
    # Where receipts and replies are pushed (the service's webhook URLs, token included).
    receipt_url: str | None = None
    reply_url: str | None = None
    # Push each receipt this long after the send (automatic pushes; with receipt_url only).
    receipt_delay_seconds: float = 0.2
    # After this many accepted numbers, hold every further answer (after accepting) until
    # POST /_fake/release: a dispatcher is then certainly waiting on the gateway, mid-batch.
    hold_after: int | None = None
    latency_ms: float = 0.0
    # Template code → text with ${name} placeholders, for the content records show.
    texts: dict[str, str] = field(default_factory=dict)
    # Share of calls answered isv.MOBILE_NUMBER_ILLEGAL whatever the numbers.
    illegal_number: float = 0.0
    # What the fake dates its records by (a test's simulated clock); None: the real time.
    clock: Callable[[], dt.datetime] | None = None


@dataclass
class FakeSms:
    biz_id: str
    out_id: str
    phone: str
    sign: str
    template: str
    params: dict[str, str]
    sent: dt.datetime
    content: str
    delivered: bool = True
    pushed: bool = False

    def receipt(self) -> dict[str, Any]:
        stamp = self.sent.strftime("%Y-%m-%d %H:%M:%S")
        return {
            "phone_number": self.phone,
            "send_time": stamp,
            "report_time": stamp,
            "success": self.delivered,
            "err_code": "DELIVERED" if self.delivered else "UNDELIV",
            "err_msg": "用户接收成功" if self.delivered else "运营商无法送达",
            "sms_size": "1",
            "biz_id": self.biz_id,
            "out_id": self.out_id,
        }

    def detail(self, pushed_only: bool) -> dict[str, Any]:
        final = 3 if self.delivered else 2
        return {
            "PhoneNum": self.phone,
            "SendStatus": final if (self.pushed or not pushed_only) else 1,
            "ErrCode": "DELIVERED" if self.delivered else "UNDELIV",
            "TemplateCode": self.template,
            "Content": self.content,
            "SendDate": self.sent.strftime("%Y-%m-%d %H:%M:%S"),
            "ReceiveDate": self.sent.strftime("%Y-%m-%d %H:%M:%S"),
            "OutId": self.out_id,
        }


class CallFailed(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class FakeAliyun:
    """The fake's state; thread-safe."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.rng = random.Random(self.config.seed)
        self.lock = threading.Lock()
        self.messages: list[FakeSms] = []
        self.per_phone: Counter[str] = Counter()
        self.per_day: Counter[tuple[str, dt.date]] = Counter()
        self.per_content: Counter[tuple[str, str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.held = 0
        self.released = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.base_url = ""
        self.endpoint = ""
        self._pushes: list[FakeSms] = []
        self._push_wake = threading.Event()
        self._stopping = threading.Event()

    # -- state ---------------------------------------------------------------------------

    def sent_count(self) -> int:
        with self.lock:
            return len(self.messages)

    def duplicates(self) -> list[str]:
        """Numbers sent the same template and parameters more than once (masked)."""
        with self.lock:
            return [f"{p[:3]}****{p[-4:]}" for (p, _, _), n in self.per_content.items() if n > 1]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sent": len(self.messages),
                "numbers": len(self.per_phone),
                "duplicates": sum(1 for n in self.per_content.values() if n > 1),
                "most_to_one_number": max(self.per_phone.values(), default=0),
                "requests": dict(self.requests),
                "held": self.held,
            }

    def now(self) -> dt.datetime:
        clock = self.config.clock
        return (
            (clock() if clock else dt.datetime.now(CHINA)).astimezone(CHINA).replace(microsecond=0)
        )

    # -- the API -------------------------------------------------------------------------

    def handle(
        self,
        query: dict[str, str],
        form: dict[str, str],
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> dict[str, Any]:
        """One RPC call; raises CallFailed for an HTTP error answer."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        params = {**query, **form}
        if headers.get("authorization", "").startswith("ACS3-"):
            self._verify_v3(query, headers, body)
        else:
            self._verify(params)
        action = headers.get("x-acs-action") or params.get("Action", "")
        with self.lock:
            self.requests[action] += 1
        if action == "QuerySendDetails":
            return self._query(params)
        if action not in ("SendSms", "SendBatchSms"):
            raise CallFailed(404, "InvalidAction.NotFound", f"no action {action!r}", {})
        outcome = self._roll()
        with self.lock:
            self.requests[outcome] += 1
        if outcome == "throttle":
            headers = {}
            if self.config.retry_after_ms:
                headers["x-acs-retry-after"] = str(self.config.retry_after_ms)
            raise CallFailed(400, "Throttling.User", "denied by user flow control", headers)
        if action == "SendSms":
            phones = [p.strip() for p in params.get("PhoneNumbers", "").split(",") if p.strip()]
            raw = params.get("TemplateParam")
            values = [_json(raw, {})] * len(phones)
            signs = [params.get("SignName", "")] * len(phones)
            limit = MAX_SEND_SMS
        else:
            phones = [str(p) for p in _json(params.get("PhoneNumberJson"), [])]
            signs = [str(s) for s in _json(params.get("SignNameJson"), [])]
            values = _json(params.get("TemplateParamJson"), None) or [{}] * len(phones)
            limit = MAX_BATCH
            if len(signs) != len(phones) or len(values) != len(phones):
                return _answer("isv.INVALID_PARAMETERS", "参数个数不一致")
        template = params.get("TemplateCode", "")
        if not phones:
            return _answer("isv.INVALID_PARAMETERS", "缺少号码")
        if len(phones) > limit:
            return _answer("isv.MOBILE_COUNT_OVER_LIMIT", "号码数量超出上限")
        if template in self.config.unapproved_templates:
            return _answer("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        if not all(signs):
            return _answer("isv.SMS_SIGNATURE_ILLEGAL", "签名不合法")
        if any(not MOBILE.match(p) for p in phones) or outcome == "illegal":
            return _answer("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        biz_id = f"{self.rng.getrandbits(40):012d}^0"
        out_id = params.get("OutId", "")
        now = self.now()
        today = now.date()
        with self.lock:
            limit_day = self.config.daily_limit
            if limit_day is not None and any(self.per_day[(p, today)] >= limit_day for p in phones):
                return _answer("isv.DAY_LIMIT_CONTROL", "触发日发送限额")
            created = []
            for phone, sign, vals in zip(phones, signs, values, strict=True):
                vals = {str(k): str(v) for k, v in (vals or {}).items()}
                sms = FakeSms(
                    biz_id=biz_id,
                    out_id=out_id,
                    phone=phone,
                    sign=sign,
                    template=template,
                    params=vals,
                    sent=now,
                    content=f"【{sign}】{self._text(template, vals)}",
                    delivered=self.rng.random() >= self.config.undelivered_share,
                )
                self.messages.append(sms)
                self.per_phone[phone] += 1
                self.per_day[(phone, today)] += 1
                self.per_content[(phone, template, json.dumps(vals, sort_keys=True))] += 1
                created.append(sms)
            if self.config.receipt_url:
                self._pushes.extend(created)
        if self.config.receipt_url:
            self._push_wake.set()
        if outcome == "500":
            raise CallFailed(500, "InternalError", "The request processing has failed.", {})
        if outcome == "timeout":
            time.sleep(self.config.timeout_seconds)
        self.hold()
        return {**_answer("OK", "OK"), "BizId": biz_id}

    def _query(self, params: dict[str, str]) -> dict[str, Any]:
        phone = params.get("PhoneNumber", "")
        day = params.get("SendDate", "")
        size = min(int(params.get("PageSize", "10") or 10), 50)
        page = max(int(params.get("CurrentPage", "1") or 1), 1)
        biz = params.get("BizId")
        with self.lock:
            found = [
                m
                for m in self.messages
                if m.phone == phone
                and m.sent.strftime("%Y%m%d") == day
                and (biz is None or m.biz_id == biz)
            ]
            pushed_only = self.config.receipt_url is not None
            rows = [m.detail(pushed_only) for m in found[(page - 1) * size : page * size]]
        return {
            **_answer("OK", "OK"),
            "TotalCount": len(found),
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": rows},
        }

    def _text(self, template: str, values: dict[str, str]) -> str:
        text = self.config.texts.get(template)
        if text is None:
            return f"[{template}]" + "，".join(values.values())
        for k, v in values.items():
            text = text.replace("${" + k + "}", v)
        return text

    def _verify(self, params: dict[str, str]) -> None:
        signature = params.get("Signature")
        key_id = params.get("AccessKeyId", "")
        if not signature or not key_id:
            raise CallFailed(400, "MissingSignature", "Signature is mandatory", {})
        keys = self.config.keys
        if keys is None:
            return
        secret = keys.get(key_id)
        if secret is None:
            raise CallFailed(404, "InvalidAccessKeyId.NotFound", "access key not found", {})
        if not hmac.compare_digest(signature, rpc_signature(params, "POST", secret)):
            raise CallFailed(400, "SignatureDoesNotMatch", "signature not matched", {})

    def _verify_v3(self, query: dict[str, str], headers: dict[str, str], body: bytes) -> None:
        """The SDK's default signature (ACS3-HMAC-SHA256 in the Authorization header)."""
        algorithm, _, rest = headers["authorization"].partition(" ")
        fields = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
        key_id = fields.get("Credential", "")
        signed = fields.get("SignedHeaders", "")
        payload = headers.get("x-acs-content-sha256", "")
        if algorithm != "ACS3-HMAC-SHA256" or not key_id or not fields.get("Signature"):
            raise CallFailed(400, "IncompleteSignature", "The request signature is incomplete.", {})
        if payload != hashlib.sha256(body).hexdigest():
            raise CallFailed(400, "InvalidPayload", "x-acs-content-sha256 does not match.", {})
        keys = self.config.keys
        if keys is None:
            return
        secret = keys.get(key_id)
        if secret is None:
            raise CallFailed(404, "InvalidAccessKeyId.NotFound", "access key not found", {})
        canonical_query = "&".join(
            f"{k}={urllib.parse.quote(v, safe='~')}" for k, v in sorted(query.items())
        )
        names = signed.split(";")
        canonical_headers = "".join(f"{n}:{headers.get(n, '').strip()}\n" for n in names)
        request = f"POST\n/\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload}"
        to_sign = f"{algorithm}\n{hashlib.sha256(request.encode()).hexdigest()}"
        expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(fields["Signature"], expected):
            raise CallFailed(400, "SignatureDoesNotMatch", "signature not matched", {})

    def _roll(self) -> str:
        c = self.config
        with self.lock:
            x = self.rng.random()
        acc = 0.0
        for outcome, share in (
            ("throttle", c.throttle),
            ("500", c.fail_500_after_accept),
            ("timeout", c.timeout_after_accept),
            ("illegal", c.illegal_number),
        ):
            acc += share
            if x < acc:
                return outcome
        return "ok"

    def hold(self) -> None:
        limit = self.config.hold_after
        with self.lock:
            if limit is None or len(self.messages) <= limit or self.released.is_set():
                return
            self.held += 1
        self.released.wait(timeout=600)
        with self.lock:
            self.held -= 1

    def delay(self) -> None:
        if self.config.latency_ms > 0:
            time.sleep(self.config.latency_ms / 1000)

    # -- pushes --------------------------------------------------------------------------

    def push_receipts(
        self,
        url: str | None = None,
        *,
        duplicate_share: float = 0.0,
        shuffle: bool = False,
        per_post: int = 50,
        seed: int = 11,
    ) -> list[int]:
        """Push a receipt for every message (duplicated and shuffled on request) to `url` (the
        receipt URL by default), `per_post` to a request; returns each post's HTTP code."""
        rng = random.Random(seed)
        with self.lock:
            sent = list(self.messages)
        receipts = [m.receipt() for m in sent]
        receipts += [m.receipt() for m in sent if rng.random() < duplicate_share]
        if shuffle:
            rng.shuffle(receipts)
        target = url or self.config.receipt_url
        assert target, "no receipt URL"
        codes = [
            post_json(target, receipts[i : i + per_post]) for i in range(0, len(receipts), per_post)
        ]
        with self.lock:
            for m in sent:
                m.pushed = True
        return codes

    def push_reply(self, phone: str, content: str, url: str | None = None) -> int:
        """A resident's reply (上行, the SmsUp push)."""
        target = url or self.config.reply_url
        assert target, "no reply URL"
        now = self.now().strftime("%Y-%m-%d %H:%M:%S")
        return post_json(
            target,
            [
                {
                    "phone_number": phone,
                    "send_time": now,
                    "content": content,
                    "sign_name": "",
                    "dest_code": "",
                    "sequence_id": self.rng.getrandbits(31),
                }
            ],
        )

    def _pusher(self) -> None:
        """Automatic receipts: each accepted message is reported after a short delay; a
        refused or failed push is tried again (as the gateway does)."""
        while not self._stopping.is_set():
            self._push_wake.wait(timeout=0.5)
            self._push_wake.clear()
            time.sleep(self.config.receipt_delay_seconds)
            with self.lock:
                batch, self._pushes = self._pushes[:500], self._pushes[500:]
            if not batch:
                continue
            url = self.config.receipt_url
            assert url is not None
            code = post_json(url, [m.receipt() for m in batch])
            with self.lock:
                if code == 200:
                    for m in batch:
                        m.pushed = True
                else:
                    self._pushes[:0] = batch
            if code != 200:
                self._stopping.wait(1.0)
            if self._pushes:
                self._push_wake.set()

    # -- serving -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"{host}:{self.server.server_address[1]}"
        self.base_url = f"http://{self.endpoint}"
        threading.Thread(target=self.server.serve_forever, name="fake-aliyun", daemon=True).start()
        if self.config.receipt_url:
            threading.Thread(target=self._pusher, name="fake-aliyun-push", daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def rpc_signature(params: dict[str, str], method: str, secret: str) -> str:
    """Alibaba Cloud's RPC signature v1 (HMAC-SHA1 over the sorted, encoded parameters)."""

    def enc(value: str) -> str:
        return urllib.parse.quote(value, safe="~")

    pairs = "&".join(
        f"{enc(k)}={enc(str(v))}" for k, v in sorted(params.items()) if k != "Signature"
    )
    to_sign = f"{method}&%2F&{urllib.parse.quote_plus(pairs, safe='~')}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def post_json(url: str, body: Any) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body, ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return 0


def _answer(code: str, message: str) -> dict[str, Any]:
    return {"Code": code, "Message": message, "RequestId": str(uuid.uuid4()).upper()}


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


class _Server(ThreadingHTTPServer):
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    state: FakeAliyun

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/_fake/stats":
            self._send(200, self.state.stats())
            return
        self._send(404, _answer("NotFound", "GET is not served"))

    def do_POST(self) -> None:
        state = self.state
        length = int(self.headers.get("Content-Length", "0"))
        raw_bytes = self.rfile.read(length)
        raw = raw_bytes.decode()
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_fake/release":
            state.released.set()
            self._send(200, state.stats())
            return
        if url.path == "/_fake/reply":  # a resident replies: {"phone": …, "content": …}
            asked = _json(raw, {})
            code = state.push_reply(str(asked.get("phone", "")), str(asked.get("content", "")))
            self._send(200, {"pushed": code})
            return
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
        state.delay()
        try:
            body = state.handle(query, form, dict(self.headers.items()), raw_bytes)
        except CallFailed as exc:
            self._send(exc.status, _answer(exc.code, exc.message), exc.headers)
            return
        self._send(200, body)


@contextmanager
def running_fake_aliyun(config: FakeConfig | None = None) -> Iterator[FakeAliyun]:
    fake = FakeAliyun(config)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--receipt-url", default=None, help="push receipts here (SmsReport)")
    parser.add_argument(
        "--reply-url", default=None, help="where POST /_fake/reply pushes a reply (SmsUp)"
    )
    parser.add_argument("--throttle", type=float, default=0.0, help="share of Throttling.User")
    parser.add_argument("--fail-500", type=float, default=0.0, help="share of 500 after accepting")
    parser.add_argument("--timeouts", type=float, default=0.0, help="share of no answer in time")
    parser.add_argument("--daily-limit", type=int, default=None, help="sends per number a day")
    parser.add_argument(
        "--unapproved-template", action="append", default=[], help="refuse this template code"
    )
    parser.add_argument(
        "--hold-after",
        type=int,
        default=None,
        help="after N accepted numbers, hold each further answer until POST /_fake/release",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="answer each call this late")
    args = parser.parse_args()
    fake = FakeAliyun(
        FakeConfig(
            throttle=args.throttle,
            fail_500_after_accept=args.fail_500,
            timeout_after_accept=args.timeouts,
            daily_limit=args.daily_limit,
            unapproved_templates=set(args.unapproved_template),
            receipt_url=args.receipt_url,
            reply_url=args.reply_url,
            hold_after=args.hold_after,
            latency_ms=args.latency_ms,
        )
    )
    url = fake.start(port=args.port)
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
