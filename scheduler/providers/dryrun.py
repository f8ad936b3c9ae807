"""The dry-run provider: one JSON line per message, and simulated delivery outcomes.

It lets everything downstream (statuses, quotas, reports, the simulator) work without an
account. Numbers are masked in the log unless PINGAN_DRYRUN__SHOW_NUMBERS is set. It speaks
only the neutral vocabulary, and its two simulated error codes are its own (CATALOGUE).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from scheduler.phones import mask
from scheduler.providers.base import (
    Accepted,
    DeliveryStatus,
    ErrorInfo,
    ErrorKind,
    OutboundMessage,
    Provider,
    SendError,
)
from scheduler.settings import DryRunSettings, Settings

UNDELIVERED = "DR-UNDELIVERED"
FAILED = "DR-FAILED"
CATALOGUE = {
    UNDELIVERED: ErrorInfo(
        kind="permanent", meaning="Simulated: not delivered to the handset / 模拟：未送达"
    ),
    FAILED: ErrorInfo(kind="permanent", meaning="Simulated: carrier failure / 模拟：运营商失败"),
    # Codes of the faults a rehearsal injects (DryRunProvider.inject).
    "DR-BUSY": ErrorInfo(
        kind="transient", retry_after_seconds=1, meaning="Simulated: busy / 模拟：繁忙，稍后重试"
    ),
    "DR-INVALID": ErrorInfo(kind="permanent", meaning="Simulated: invalid number / 模拟：号码无效"),
    "DR-REFUSED": ErrorInfo(
        kind="permanent", opt_out=True, meaning="Simulated: recipient refused / 模拟：用户已退订"
    ),
    "DR-UNAPPROVED": ErrorInfo(
        kind="permanent",
        halt=True,
        meaning="Simulated: template not approved / 模拟：模板未审核通过，整个活动暂停",
    ),
    "DR-LOST": ErrorInfo(
        kind="permanent", meaning="Simulated: answer lost / 模拟：应答丢失，需查询"
    ),
}


class Fault(enum.StrEnum):
    """A fault the next send meets (a rehearsal of a failing gateway; the contract suite)."""

    TRANSIENT = "transient"  # never processed: DR-BUSY
    PERMANENT = "permanent"  # DR-INVALID
    OPT_OUT = "opt_out"  # DR-REFUSED: the number is opted out
    HALT = "halt"  # DR-UNAPPROVED: the whole campaign stops
    UNCERTAIN_SENT = "uncertain_sent"  # logged (sent), then the answer is lost
    UNCERTAIN_UNSENT = "uncertain_unsent"  # the answer is lost and nothing was logged


_FAULT_CODE = {
    Fault.TRANSIENT: "DR-BUSY",
    Fault.PERMANENT: "DR-INVALID",
    Fault.OPT_OUT: "DR-REFUSED",
    Fault.HALT: "DR-UNAPPROVED",
    Fault.UNCERTAIN_SENT: "DR-LOST",
    Fault.UNCERTAIN_UNSENT: "DR-LOST",
}

_SIMULATED_CODE = {
    DeliveryStatus.UNDELIVERED.value: UNDELIVERED,
    DeliveryStatus.FAILED.value: FAILED,
}


class DryRunProvider(Provider):
    name = "dryrun"
    settles_at_once = True

    @classmethod
    def from_settings(cls, settings: Settings) -> DryRunProvider:
        return cls(settings.dryrun, settings.dryrun_log_file)

    @classmethod
    def catalogue(cls, config_dir: Path) -> dict[str, ErrorInfo]:
        return dict(CATALOGUE)

    def __init__(self, settings: DryRunSettings, log_file: Path, *, max_batch: int = 1) -> None:
        """`max_batch` > 1 rehearses a gateway that takes several numbers per call."""
        self.settings = settings
        self.max_batch = max_batch
        # A rehearsal talks to no carrier: paced only if asked (PINGAN_DRYRUN__RATE_LIMITED).
        self.paced = settings.rate_limited
        self.log_file = log_file
        self._fh: TextIO | None = None
        if settings.write_log:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            self._fh = log_file.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._rng = random.Random(settings.seed)
        self._uuid_rng = random.Random(settings.seed)
        self._unflushed = 0
        self._faults: collections.deque[Fault] = collections.deque()

    def inject(self, *faults: Fault) -> None:
        """The next sends meet these faults, one each, in order."""
        with self._lock:
            self._faults.extend(faults)

    def _fault_error(self, fault: Fault) -> SendError:
        code = _FAULT_CODE[fault]
        info = CATALOGUE[code]
        if fault in (Fault.UNCERTAIN_SENT, Fault.UNCERTAIN_UNSENT):
            return SendError("simulated lost answer", kind=ErrorKind.UNCERTAIN, code=code)
        return SendError(
            f"simulated error {code}",
            kind=ErrorKind(info.kind),
            code=code,
            retry_after=info.retry_after_seconds,
            opted_out=info.opt_out,
            halt=info.halt,
            meaning=info.meaning,
        )

    def _outcome(self, carrier: str) -> tuple[DeliveryStatus, str | None]:
        s = self.settings
        delivered = s.delivered_share_by_carrier.get(carrier, s.delivered_share)
        rest = max(0.0, 1.0 - delivered)
        other = s.undelivered_share + s.failed_share
        undelivered = rest * (s.undelivered_share / other) if other else rest
        x = self._rng.random()
        if x < delivered:
            return DeliveryStatus.DELIVERED, None
        if x < delivered + undelivered:
            return DeliveryStatus.UNDELIVERED, UNDELIVERED
        return DeliveryStatus.FAILED, FAILED

    def send(self, msg: OutboundMessage) -> Accepted:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            if fault is not None and fault != Fault.UNCERTAIN_SENT:
                raise self._fault_error(fault)
            status, code = self._outcome(msg.carrier)
            sid = f"DR{self._uuid_rng.getrandbits(128):032x}"
            if self._fh is None:
                if fault is not None:  # no log, no record: as if nothing had gone out
                    raise self._fault_error(Fault.UNCERTAIN_UNSENT)
                return Accepted(sid, DeliveryStatus.SENT, final_status=status, error_code=code)
            line = {
                "sid": sid,
                "message_id": msg.id,
                "to": msg.phone if self.settings.show_numbers else mask(msg.phone),
                "carrier": msg.carrier,
                "segments": msg.segments,
                "body": msg.body,
                "simulated_status": status,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            }
            self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._unflushed += 1
            if fault is not None:  # UNCERTAIN_SENT: it is in the log; the answer is lost
                self._fh.flush()
                self._unflushed = 0
                raise self._fault_error(fault)
            # A line not yet flushed when the process dies was, in effect, never sent: the
            # dispatcher's reconciliation will not find it and sends it again, once.
            if self._unflushed >= 1000:
                self._fh.flush()
                self._unflushed = 0
        return Accepted(sid, DeliveryStatus.SENT, final_status=status, error_code=code)

    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        """Look the message up in the log: the log is the dry-run provider's own record."""
        found = self.find_sent_many([(msg, since)])[0]
        return found if isinstance(found, Accepted) else None

    def find_sent_many(
        self, lookups: Sequence[tuple[OutboundMessage, dt.datetime]]
    ) -> list[Accepted | SendError | None]:
        """One pass over the log for all the messages asked about (a crash can leave a whole
        batch `sending`; reading the log once per message made that quadratic)."""
        wanted = {msg.id for msg, _ in lookups}
        found: dict[int, Accepted] = {}
        with self._lock:
            if self._fh is None:
                return [None] * len(lookups)  # no log, no record: what was in flight goes again
            self._fh.flush()
            with self.log_file.open(encoding="utf-8") as fh:
                for raw in fh:
                    try:
                        line = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    mid = line.get("message_id") if isinstance(line, dict) else None
                    if mid in wanted and mid not in found:
                        simulated = line.get("simulated_status")
                        found[mid] = Accepted(
                            line["sid"],
                            DeliveryStatus.SENT,
                            final_status=DeliveryStatus(simulated) if simulated else None,
                            error_code=_SIMULATED_CODE.get(simulated or ""),
                        )
                        if len(found) == len(wanted):
                            break
        return [found.get(msg.id) for msg, _ in lookups]

    def close(self) -> None:
        with self._lock:
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
