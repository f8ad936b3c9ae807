"""The engine names no provider: the dispatcher, the store, callbacks and the web core speak
only the neutral vocabulary of scheduler.providers.base (issue 12's acceptance)."""

from __future__ import annotations

import re
from pathlib import Path

from scheduler.providers import names

ROOT = Path(__file__).resolve().parents[2] / "scheduler"
NEUTRAL = [
    ROOT / "dispatcher.py",
    ROOT / "callbacks.py",
    ROOT / "web" / "app.py",
    ROOT / "web" / "api.py",
    ROOT / "web" / "webhooks.py",
    *sorted((ROOT / "store").glob("*.py")),
]
# Provider vocabulary that once leaked into the engine: field names, status names, codes.
FORBIDDEN = [
    *(rf"\b{re.escape(n)}\b" for n in names()),
    r"dry[- ]run",
    r"MessageSid",
    r"MessageStatus",
    r"\b21610\b",
    r"\b30004\b",
]


def test_no_provider_is_named_in_the_engine() -> None:
    assert len(NEUTRAL) > 6
    found = [
        f"{path.relative_to(ROOT.parent)}:{n}: {line.strip()}"
        for path in NEUTRAL
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in FORBIDDEN
        if re.search(pattern, line, re.IGNORECASE)
    ]
    assert found == []


def test_the_check_would_catch_a_provider_name() -> None:
    line = 'if provider.name != "twilio" and form["MessageSid"]:'
    assert {p for p in FORBIDDEN if re.search(p, line, re.IGNORECASE)} >= {
        r"\btwilio\b",
        r"MessageSid",
    }
