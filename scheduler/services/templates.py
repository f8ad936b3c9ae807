"""Template use cases: approve what an operator reviewed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler.core import Core


@dataclass(frozen=True)
class Approval:
    name: str
    source_hash: str
    by: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.source_hash, "by": self.by}


def approve_template(core: Core, name: str, by: str) -> Approval:
    """Record approval of the template's current content (its sha256) in approvals.yaml;
    refused (TemplateError) while it does not lint clean."""
    cat = core.catalogue
    cat.approve(name, by)
    return Approval(name, cat.get(name).source_hash, by)
