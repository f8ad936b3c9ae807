"""The provider interface the dispatcher sends through, and the error catalogue it classifies by.

A provider sends one message and returns the provider's id, or raises `SendError` with a kind:

- TRANSIENT: the request was never processed (HTTP 429, Twilio 20429, connection refused before
  anything went out): safe to send again after a backoff, honouring `retry_after`.
- PERMANENT: it will never succeed (invalid or landline number, unsubscribed): stop.
- UNCERTAIN: the provider may have created the message (a 5xx or a timeout after the request
  went out): `find_sent` must be asked before anything is sent again.

A domestic gateway (a cloud SMS API, a carrier SMPP/CMPP link) is added by implementing this
interface; the dispatcher does not change.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, RootModel

from scheduler.config import parse_model, read_yaml
from scheduler.exceptions import ProviderError

ERRORS_FILE = "twilio_errors.yaml"


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class OutboundMessage:
    id: int
    phone: str
    body: str
    carrier: str
    segments: int


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str
    status: str
    # The dry-run provider's simulated outcome: delivered, undelivered or failed.
    final_status: str | None = None
    error_code: str | None = None


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
        opt_out: bool = False,
        meaning: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.opt_out = opt_out
        self.meaning = meaning


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["transient", "permanent"]
    opt_out: bool = False
    meaning: str


class _ErrorFile(RootModel[dict[str, ErrorInfo]]):
    pass


def error_catalogue(config_dir: Path) -> dict[str, ErrorInfo]:
    """Provider error codes → kind, opt-out, meaning (config/twilio_errors.yaml)."""
    path = config_dir / ERRORS_FILE
    if not path.exists():
        return {}
    raw = read_yaml(path) or {}
    data = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else raw
    return parse_model(path, _ErrorFile, data).root


class Provider(abc.ABC):
    """Sends messages. Implementations must be safe to call from several threads at once."""

    name: ClassVar[str]

    @abc.abstractmethod
    def send(self, msg: OutboundMessage) -> Accepted:
        """Send one message. Raises SendError (with its kind) when the provider did not take it."""

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
