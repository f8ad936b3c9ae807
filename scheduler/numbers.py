"""The one rounding rule for quota targets, percentages and money: half up, in Decimal.

Python's built-in rounding takes halves to even (248.5 → 248) and floats carry binary noise
(0.1 + 0.2); the province's tables round halves up, so every figure an office sees goes through
here.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

Number = Decimal | int | str


def half_up(value: Number, places: int = 0) -> Decimal:
    """`value` rounded half up to `places` decimals (floats are refused: pass str or Decimal)."""
    if isinstance(value, float):
        raise TypeError("pass a Decimal, int or str: a float has already lost the exact value")
    quantum = Decimal(1).scaleb(-places)
    return Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP)


def half_up_int(value: Number) -> int:
    """`value` rounded half up to a whole number."""
    return int(half_up(value))


def ratio(num: Number, den: Number, places: int = 4) -> Decimal | None:
    """num / den rounded half up; None when den is 0 (no rate without a base)."""
    d = Decimal(den)
    if d == 0:
        return None
    return half_up(Decimal(num) / d, places)
