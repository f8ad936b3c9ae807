"""Twilio, through the official client.

The client's HTTP layer gets a timeout and no automatic retries: a re-POST after a lost
response would send a message twice, so every retry decision is the dispatcher's. Errors are
classified by config/twilio_errors.yaml (this provider's catalogue), and Twilio's status names
are mapped to the neutral ones here (STATUS). One client per thread (requests sessions are not
shared between threads). Its webhooks are in scheduler.providers.twilio_webhooks.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from scheduler.exceptions import SettingsError
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
)
from scheduler.settings import Settings, TwilioSettings

if TYPE_CHECKING:
    from fastapi import APIRouter

ERRORS_FILE = "twilio_errors.yaml"
# Twilio's message statuses in the neutral vocabulary.
STATUS = {
    "accepted": DeliveryStatus.ACCEPTED,
    "scheduled": DeliveryStatus.ACCEPTED,
    "queued": DeliveryStatus.ACCEPTED,
    "sending": DeliveryStatus.ACCEPTED,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
STATUS_PATH = "/webhooks/twilio/status"


def neutral_status(status: str | None) -> DeliveryStatus | None:
    return STATUS.get((status or "queued").lower())


class _NoRetryHttpClient(TwilioHttpClient):  # type: ignore[misc]
    def __init__(self, timeout: float, pool_size: int, url: str) -> None:
        # Proxies from the environment are read once here: requests would otherwise scan
        # os.environ on every request, a sixth of the dispatcher's time per message.
        proxies = requests.utils.get_environ_proxies(url)
        super().__init__(pool_connections=True, timeout=timeout, proxy=proxies or None)
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=pool_size)
        assert self.session is not None
        self.session.trust_env = False
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)


class TwilioProvider(Provider):
    name = "twilio"

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioProvider:
        return cls(settings.twilio, settings)

    @classmethod
    def catalogue_file(cls, config_dir: Path) -> Path | None:
        return config_dir / ERRORS_FILE

    @classmethod
    def webhook_router(cls, settings: Settings, events: ProviderEvents) -> APIRouter | None:
        from scheduler.providers.twilio_webhooks import twilio_router

        return twilio_router(settings, events, cls.catalogue(settings.config_dir))

    def __init__(self, twilio: TwilioSettings, settings: Settings) -> None:
        if not twilio.account_sid or not twilio.auth_token.get_secret_value():
            raise SettingsError(
                "provider twilio needs PINGAN_TWILIO__ACCOUNT_SID and PINGAN_TWILIO__AUTH_TOKEN"
            )
        if not twilio.messaging_service_sid and not twilio.from_number:
            raise SettingsError(
                "provider twilio needs PINGAN_TWILIO__MESSAGING_SERVICE_SID or "
                "PINGAN_TWILIO__FROM_NUMBER"
            )
        self.cfg = twilio
        self.status_callback = settings.public_base_url.rstrip("/") + STATUS_PATH
        self.errors: dict[str, ErrorInfo] = self.catalogue(settings.config_dir)
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(
                self.cfg.account_sid,
                self.cfg.auth_token.get_secret_value(),
                http_client=_NoRetryHttpClient(
                    self.cfg.timeout_seconds, 4, self.cfg.base_url or "https://api.twilio.com"
                ),
            )
            # Never let TWILIO_EDGE / TWILIO_REGION from the environment redirect requests.
            client.edge = None
            client.region = None
            if self.cfg.base_url:
                client.api.base_url = self.cfg.base_url.rstrip("/")
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _create_params(self, msg: OutboundMessage) -> dict[str, Any]:
        params: dict[str, Any] = {
            "to": e164(msg.phone),
            "body": msg.body,
            "status_callback": self.status_callback,
        }
        if self.cfg.messaging_service_sid:
            params["messaging_service_sid"] = self.cfg.messaging_service_sid
        else:
            params["from_"] = self.cfg.from_number
        return params

    def send(self, msg: OutboundMessage) -> Accepted:
        client = self._client()
        try:
            created = client.messages.create(**self._create_params(msg))
        except TwilioRestException as exc:
            raise self._classify_rest(exc, client) from None
        except requests.exceptions.ConnectTimeout as exc:
            raise SendError(f"connect timeout: {exc}", kind=ErrorKind.TRANSIENT) from None
        except requests.exceptions.ConnectionError as exc:
            # Refused before the request went out is safe to retry; anything later is not.
            if _never_sent(exc):
                raise SendError(f"connection refused: {exc}", kind=ErrorKind.TRANSIENT) from None
            raise SendError(f"connection lost: {exc}", kind=ErrorKind.UNCERTAIN) from None
        except requests.exceptions.Timeout as exc:
            raise SendError(f"timeout after sending: {exc}", kind=ErrorKind.UNCERTAIN) from None
        return Accepted(str(created.sid), neutral_status(created.status) or DeliveryStatus.ACCEPTED)

    def _classify_rest(self, exc: TwilioRestException, client: Client) -> SendError:
        code = str(exc.code) if exc.code is not None else None
        status = int(exc.status)
        info = self.errors.get(code or "")
        meaning = info.meaning if info else ""
        text = f"HTTP {status}, Twilio error {code}: {exc.msg}"
        if status == 429 or code == "20429":
            return SendError(
                text,
                kind=ErrorKind.TRANSIENT,
                code=code or "20429",
                http_status=status,
                retry_after=_retry_after(client),
                meaning=meaning,
            )
        if status >= 500:
            return SendError(text, kind=ErrorKind.UNCERTAIN, code=code, http_status=status)
        kind = ErrorKind.TRANSIENT if info and info.kind == "transient" else ErrorKind.PERMANENT
        retry_after = None
        if kind == ErrorKind.TRANSIENT:
            retry_after = _retry_after(client) or (info.retry_after_seconds if info else None)
        return SendError(
            text,
            kind=kind,
            code=code,
            http_status=status,
            retry_after=retry_after,
            opted_out=bool(info and info.opt_out),
            halt=bool(info and info.halt),
            meaning=meaning,
        )

    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        client = self._client()
        try:
            found = client.messages.list(to=e164(msg.phone), limit=50, page_size=50)
        except (TwilioRestException, requests.exceptions.RequestException) as exc:
            raise SendError(
                f"cannot look up messages to {mask(msg.phone)}: {exc}", kind=ErrorKind.UNCERTAIN
            ) from None
        for m in found:
            created = m.date_created
            if m.body == msg.body and (created is None or created >= since):
                return Accepted(str(m.sid), neutral_status(m.status) or DeliveryStatus.ACCEPTED)
        return None

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                session = getattr(c.http_client, "session", None)
                if session is not None:
                    session.close()
            self._clients.clear()


def _retry_after(client: Client) -> float | None:
    response = getattr(client.http_client, "_test_only_last_response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _never_sent(exc: Exception) -> bool:
    """True when the connection failed before any byte of the request left."""
    text = repr(exc)
    return any(
        marker in text
        for marker in (
            "NewConnectionError",
            "Connection refused",
            "ConnectTimeout",
            "NameResolution",
        )
    )
