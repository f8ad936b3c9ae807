"""SMS length as carriers bill it, exactly at the segment boundaries."""

from __future__ import annotations

import pytest

from scheduler.sms_length import measure


@pytest.mark.parametrize(
    ("text", "segments", "encoding"),
    [
        ("", 0, "gsm7"),
        ("a" * 160, 1, "gsm7"),
        ("a" * 161, 2, "gsm7"),
        ("a" * 306, 2, "gsm7"),  # 153 per part
        ("a" * 307, 3, "gsm7"),
        ("中" * 70, 1, "ucs2"),
        ("中" * 71, 2, "ucs2"),
        ("中" * 134, 2, "ucs2"),  # 67 per part
        ("中" * 135, 3, "ucs2"),
        ("a" * 69 + "中", 1, "ucs2"),  # one Chinese character makes the whole message UCS-2
        ("a" * 70 + "中", 2, "ucs2"),
    ],
)
def test_segment_boundaries(text: str, segments: int, encoding: str) -> None:
    m = measure(text)
    assert (m.segments, m.encoding) == (segments, encoding)
    assert m.chars == len(text)


def test_gsm7_extended_characters_count_double() -> None:
    assert measure("{" * 80).units == 160
    assert measure("{" * 80).segments == 1
    assert measure("{" * 80 + "a").segments == 2
    assert measure("€" * 80).encoding == "gsm7"


def test_characters_outside_the_bmp_take_two_ucs2_units() -> None:
    m = measure("😀" * 35)
    assert (m.chars, m.units, m.segments) == (35, 70, 1)
    assert measure("😀" * 36).segments == 2
