"""SMS length as carriers bill it: GSM-7 160 (153 per part), UCS-2 70 (67 per part).

A message with any character outside the GSM-7 alphabet goes as UCS-2, counted in UTF-16 code
units; GSM-7 extension characters (^{}\\[~]|€ and form feed) take two septets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SmsLength:
    chars: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int
    encoding: Literal["gsm7", "ucs2"]


def measure(text: str) -> SmsLength:
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in text)
        single, part = 160, 153
        encoding: Literal["gsm7", "ucs2"] = "gsm7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part = 70, 67
        encoding = "ucs2"
    if units == 0:
        segments = 0
    elif units <= single:
        segments = 1
    else:
        segments = math.ceil(units / part)
    return SmsLength(chars=len(text), units=units, segments=segments, encoding=encoding)
