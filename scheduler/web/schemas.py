"""Request and response models of the HTTP API: what /openapi.json declares and what is checked.

Every text field refuses NUL and lone surrogates (neither can be stored) and has a length the
database column holds; numbers are finite and bounded, so a malformed request is a 422 naming
the field, never a 500 from deeper down.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


# Strings that can be stored: bounded, no NUL, valid Unicode.
Storable = AfterValidator(_storable)
Str16 = Annotated[str, Field(max_length=16), Storable]
Str32 = Annotated[str, Field(max_length=32), Storable]
Str40 = Annotated[str, Field(max_length=40), Storable]
Str64 = Annotated[str, Field(max_length=64), Storable]
Str255 = Annotated[str, Field(max_length=255), Storable]
Str1600 = Annotated[str, Field(max_length=1600), Storable]


MAX_AMOUNT_YUAN = 10**12  # a trillion yuan: far above any case, far below the column's limit


class ErrorOut(BaseModel):
    """A refusal with its reason (401, 403, 503, and business errors)."""

    error: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """A malformed request: each field in error and why (FastAPI's 422 shape, without input)."""

    detail: list[FieldError]


# -- opt-outs ---------------------------------------------------------------------------------


class OptOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phones: list[Str32] = Field(default_factory=list, max_length=10_000)
    phone: Str32 | None = None
    source: Str32 = Field("api", min_length=1)
    reason: Str255 | None = None


class InvalidPhone(BaseModel):
    phone: str = Field(description="the last four characters only")
    reason: str


class OptOutOut(BaseModel):
    """200 when every number was recorded, 422 (same shape) when some were not numbers."""

    recorded: int
    new: int
    invalid: list[InvalidPhone]


# -- cases ------------------------------------------------------------------------------------


class CaseIn(BaseModel):
    """A fraud case as the police report it; town and village by id or name."""

    model_config = ConfigDict(extra="ignore")

    case_id: Str64 = Field(min_length=1)
    time: Str40 = Field(description="ISO date-time, local time if no offset")
    amount: float | Str32 = Field(description="loss in yuan, 0 to 10^12")
    fraud_type: Str64 = ""
    place: Str255 = ""
    town: Str64 = Field(min_length=1)
    village: Str64 = Field(min_length=1)

    @field_validator("time")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("not an ISO date-time such as 2022-10-09T14:30") from None
        if not 2000 <= when.year <= 2100:
            raise ValueError("the year must be between 2000 and 2100")
        return value.strip()

    @field_validator("amount")
    @classmethod
    def _finite_amount(cls, value: float | str) -> float | str:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.replace(",", ""))
            except ValueError:
                raise ValueError("not a number of yuan") from None
        assert isinstance(number, float | int)
        if not math.isfinite(number) or not 0 <= number <= MAX_AMOUNT_YUAN:
            raise ValueError(f"must be a number of yuan from 0 to {MAX_AMOUNT_YUAN}")
        return value

    def as_row(self) -> dict[str, str]:
        """The shape scheduler.cases.parse_case reads (the CSV import's)."""
        return {
            "case_id": self.case_id,
            "time": self.time,
            "amount": str(self.amount),
            "fraud_type": self.fraud_type,
            "place": self.place,
            "town": self.town,
            "village": self.village,
        }


class CaseRejected(BaseModel):
    index: int
    reason: str


class CasesRejectedOut(BaseModel):
    """Nothing was stored: the cases below name an unknown place or the like."""

    rejected: list[CaseRejected]


class SendIn(BaseModel):
    """A count a carrier or town reports for its own sends (see `pingan sends import`)."""

    model_config = ConfigDict(extra="ignore")

    source: Str64 = Field(min_length=1, description="the carrier or town that sent")
    subject: Str64 = Field(min_length=1, description="carrier, town or village counted")
    village: Str64 = ""
    period: Str32 = Field(min_length=1, description="a day (2022-10-12) or ISO week (2022-W41)")
    messages_sent: int | Str32
    people_reached: int | Str32 | None = None
    note: Str255 = ""

    def as_row(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}


class SendRejectedOut(BaseModel):
    line: str
    reason: str


class SendsOut(BaseModel):
    read: int
    inserted: int
    updated: int
    rejected: list[SendRejectedOut]


class CasesOut(BaseModel):
    inserted: int
    unchanged: int
    alerts: list[dict[str, Any]]


# -- quota and reports ------------------------------------------------------------------------


class WindowOut(BaseModel):
    label: str
    start: str
    end: str


class QuotaStatusOut(BaseModel):
    rule: str
    name: str
    window: WindowOut
    measure: str
    measure_label: str
    subject: str
    base: str
    share: str
    rows: list[dict[str, Any]]


class ReportFormOut(BaseModel):
    header: list[str]
    rows: list[list[Any]]
    total: list[Any]


class MonthlyReportOut(BaseModel):
    month: str
    form: ReportFormOut
    quotas: list[list[Any]]
    delivery: dict[str, Any]
    checkback: list[list[Any]]


# -- audit, health, webhooks ------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    id: int
    at: dt.datetime
    who: str
    action: str
    peer: str
    detail: dict[str, Any]


class HealthOut(BaseModel):
    """200 for a leader and a standby alike; 503 (same shape) when the database is down."""

    model_config = ConfigDict(extra="allow")

    database: str
    role: Literal["leader", "standby"]
    scheduler: str


class WebhookResultOut(BaseModel):
    result: str
