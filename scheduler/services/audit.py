"""The audit log as use cases read and write it: who changed what, numbers masked on the way out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.core import Core
from scheduler.phones import mask
from scheduler.store import audit as store


class Actor(Protocol):
    """Whoever asked for a change: a token's (or a user's) name and the peer address."""

    @property
    def name(self) -> str: ...

    @property
    def peer(self) -> str: ...


def record(core: Core, actor: Actor, action: str, detail: dict[str, Any]) -> None:
    store.record(
        core.engine, who=actor.name, action=action, peer=actor.peer, detail=detail, at=core.clock()
    )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    who: str
    action: str
    peer: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "who": self.who,
            "action": self.action,
            "peer": self.peer,
            "detail": self.detail,
        }


def audit_entries(
    core: Core, *, limit: int = 100, who: str | None = None, action: str | None = None
) -> list[AuditEntry]:
    """The latest entries first, with any phone numbers in their detail masked."""
    return [
        AuditEntry(e.id, e.at, e.who, e.action, e.peer, _masked(e.detail))
        for e in store.entries(core.engine, limit=limit, who=who, action=action)
    ]


def _masked(detail: dict[str, Any]) -> dict[str, Any]:
    phones = detail.get("phones")
    if isinstance(phones, list):
        return {**detail, "phones": [mask(str(p)) for p in phones]}
    return detail
