"""The provider plug-in interface: what the dispatcher, store and web core know of a provider.

A provider sends messages and returns its id for each, or raises `SendError` with a kind:

- TRANSIENT: the request was never processed (rate limited, connection refused before anything
  went out): safe to send again after a backoff, honouring `retry_after`.
- PERMANENT: it will never succeed (invalid or landline number, unsubscribed): stop.
- UNCERTAIN: the provider may have created the message (a 5xx or a timeout after the request
  went out): `find_sent` must be asked before anything is sent again.

Everything a provider reports is translated into one neutral vocabulary here
(`DeliveryStatus`, `StatusReport`, `InboundReply`, the flags of `ErrorInfo`), so the engine
never learns a provider's status names, field names or error codes. Each provider owns its
error catalogue file, its look-up after an uncertain send, and the webhook routes (with their
verification) that turn its pushes into neutral reports for `ProviderEvents`.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, RootModel

from scheduler.config import parse_model, read_yaml
from scheduler.exceptions import ProviderError

if TYPE_CHECKING:
    from fastapi import APIRouter

    from scheduler.gateway_templates import GatewayTemplates
    from scheduler.settings import Settings


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNCERTAIN = "uncertain"


class DeliveryStatus(enum.StrEnum):
    """Where a message stands at the provider, in the engine's words (the store and quotas
    read only these). A provider maps its own status names onto them."""

    ACCEPTED = "accepted"  # taken, not yet handed to a carrier
    SENT = "sent"  # handed to a carrier
    DELIVERED = "delivered"  # the handset confirmed it
    UNDELIVERED = "undelivered"  # the carrier could not deliver it
    FAILED = "failed"  # the provider gave up before the carrier


@dataclass(frozen=True)
class OutboundMessage:
    id: int
    phone: str
    # Our text, signature included (what Twilio sends, what segments are counted on).
    body: str
    carrier: str
    segments: int
    # Our template's name, and its parameter values for this provider's gateway template
    # (config/gateway_templates.yaml): what a template-code gateway sends instead of `body`.
    template: str | None = None
    params: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str
    status: DeliveryStatus = DeliveryStatus.ACCEPTED
    # Known at once only for a simulated send (dry-run): delivered, undelivered or failed.
    final_status: DeliveryStatus | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class StatusReport:
    """A delivery receipt (pushed or pulled), already in the neutral vocabulary."""

    provider_message_id: str
    status: DeliveryStatus
    error_code: str | None = None
    # The number the message went to, when the receipt names it (needed to record an opt-out).
    phone: str | None = None
    # The provider's catalogue says this error means the resident or carrier refused.
    opted_out: bool = False


@dataclass(frozen=True)
class InboundReply:
    """A resident's reply (上行), whatever the provider's field names."""

    phone: str
    text: str


class SendError(ProviderError):
    """The provider did not take the message."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        opted_out: bool = False,
        halt: bool = False,
        meaning: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.opted_out = opted_out
        # Nothing in this campaign can go out (an unapproved signature or template): the
        # dispatcher pauses the occurrence and raises an alert instead of failing each message.
        self.halt = halt
        self.meaning = meaning


class ErrorInfo(BaseModel):
    """One code of a provider's error catalogue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["transient", "permanent"]
    # The resident refused or the carrier blocks further messages: the number is opted out.
    opt_out: bool = False
    # Stop the whole campaign (pause the occurrence) with an alert.
    halt: bool = False
    # For a transient code the provider sends no Retry-After for (per-number daily limits).
    retry_after_seconds: float | None = None
    meaning: str


class _ErrorFile(RootModel[dict[str, ErrorInfo]]):
    pass


def load_catalogue(path: Path) -> dict[str, ErrorInfo]:
    """A provider's error catalogue: code → kind, flags, meaning. Missing file: empty."""
    if not path.exists():
        return {}
    raw = read_yaml(path) or {}
    data = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else raw
    return parse_model(path, _ErrorFile, data).root


class ProviderEvents(Protocol):
    """What a provider's webhook routes hand their verified, translated pushes to."""

    def status(self, report: StatusReport) -> str:
        """Apply a delivery receipt; returns applied, unchanged, ignored or pending."""
        ...

    def inbound(self, reply: InboundReply) -> bool:
        """Record a reply; True if it opted the number out."""
        ...


def no_template(msg: OutboundMessage, gateway: str, why: str = "") -> SendError:
    """What a template-code provider raises for a message it has no code or parameters for:
    no message of the campaign can go out until the mapping is added, so it halts."""
    return SendError(
        f"template {msg.template!r} has no {gateway} template code or parameters "
        f"(config/gateway_templates.yaml){': ' + why if why else ''}",
        kind=ErrorKind.PERMANENT,
        code="NO_TEMPLATE",
        halt=True,
        meaning="模板未在短信平台登记（config/gateway_templates.yaml 中没有模板编号或参数）",
    )


def template_code(
    msg: OutboundMessage, templates: GatewayTemplates, gateway: str
) -> tuple[str, Mapping[str, str]]:
    """The gateway template code and parameter values to send `msg` with; raises
    `no_template` when the mapping or the stored values are missing, or when the mapping's
    parameter names changed after the message was expanded (its values no longer fit)."""
    mapping = templates.get(gateway, msg.template) if msg.template else None
    if mapping is None or msg.params is None:
        raise no_template(msg, gateway)
    if set(msg.params) != set(mapping.params):
        raise no_template(
            msg,
            gateway,
            f"parameters {sorted(msg.params)} were stored, the mapping now names "
            f"{sorted(mapping.params)}",
        )
    return mapping.code, msg.params


class WebhookRefused(Exception):
    """A provider's webhook refused a request (bad signature 403, no secret 503)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class Provider(abc.ABC):
    """Sends messages. Implementations must be safe to call from several threads at once."""

    name: ClassVar[str]
    # The most numbers one `send_batch` call takes (1: the dispatcher sends one by one).
    max_batch: int = 1
    # Held to the dispatch rate limits (a real carrier is; a rehearsal need not be).
    paced: bool = True
    # Every outcome is known when the send returns (a rehearsal): no receipt to wait for, so
    # the service never pulls receipts from it.
    settles_at_once: ClassVar[bool] = False
    # Sends a registered template code and parameters, not our text (aliyun, tencent): the
    # gateway adds the signature itself, and `pingan check` verifies the code mappings.
    uses_templates: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> Provider:
        """Build from settings; raises SettingsError when something it needs is missing."""

    @classmethod
    def catalogue_file(cls, config_dir: Path) -> Path | None:
        """Where this provider's error catalogue lives (None: it keeps it in code)."""
        return None

    @classmethod
    def signature_setting(cls, settings: Settings) -> tuple[str, str] | None:
        """The setting naming the signature a gateway adds itself, and its value (checked
        against the district's by `pingan check`); None when we send the signature."""
        return None

    @classmethod
    def catalogue(cls, config_dir: Path) -> dict[str, ErrorInfo]:
        """Error code → kind, flags, meaning (for classifying and for delivery stats)."""
        path = cls.catalogue_file(config_dir)
        return load_catalogue(path) if path is not None else {}

    @classmethod
    def webhook_router(cls, settings: Settings, events: ProviderEvents) -> APIRouter | None:
        """Routes for the provider's pushes (receipts, replies), verifying each request and
        raising WebhookRefused when it cannot. Mounted whatever provider is configured, so a
        receipt for a message sent before a switch still lands."""
        return None

    @abc.abstractmethod
    def send(self, msg: OutboundMessage) -> Accepted:
        """Send one message. Raises SendError (with its kind) when the provider did not take it."""

    def send_batch(self, msgs: Sequence[OutboundMessage]) -> list[Accepted | SendError]:
        """Send up to `max_batch` messages in one call; a result per message, in order. A
        provider whose API takes several numbers at once overrides this; an error of the
        whole call is that error for every message in it."""
        out: list[Accepted | SendError] = []
        for msg in msgs:
            try:
                out.append(self.send(msg))
            except SendError as exc:
                out.append(exc)
        return out

    @abc.abstractmethod
    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        """The provider's record of `msg` created since `since`, or None if it has none.

        Raises SendError(UNCERTAIN) when it cannot tell; the message is then left for an
        operator rather than risk a duplicate.
        """

    def find_sent_many(
        self, lookups: Sequence[tuple[OutboundMessage, dt.datetime]]
    ) -> list[Accepted | SendError | None]:
        """`find_sent` for many messages (reconciliation after a crash), in order; a SendError
        in place of an answer the provider could not give. Override when one pass is cheaper."""
        out: list[Accepted | SendError | None] = []
        for msg, since in lookups:
            try:
                out.append(self.find_sent(msg, since))
            except SendError as exc:
                out.append(exc)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
