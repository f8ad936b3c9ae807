"""The one place the wall clock is read for domain timestamps.

Everything that stamps a time (a firing, an opt-out, a filed report, a template approval, the
date in a letter) takes a `Clock`; the service passes `system_clock`, the simulator and the
tests a clock they move themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
