"""Synthetic recipient lists for the sample district: realistic, and nobody's real number.

Numbers are generated inside real carrier segments (so carrier detection is exercised), in
proportion to each carrier's subscribers; villages get residents in proportion to their
population; segments follow a plausible mix. Numbers come from a per-prefix permutation of a
counter, so they are unique and deterministic for a seed without remembering the ones drawn:
memory stays flat however many rows are generated.
"""

from __future__ import annotations

import csv
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from scheduler.config import District

DEFAULT_SEED = 20221001
COVERAGE = 0.97
# Carriers' real segments, virtual operators included under the host carrier they resell
# (165 and 1703 on Mobile, 167 and 171 on Unicom, 162 and 1700 on Telecom), weighted roughly
# as subscribers hold them. No prefix here is a prefix of another, so numbers never collide.
PREFIXES: dict[str, tuple[tuple[str, int], ...]] = {
    "mobile": (
        *((p, 6) for p in ("135", "136", "137", "138", "139", "150", "151", "152")),
        *((p, 4) for p in ("157", "158", "159", "182", "183", "187", "188", "198")),
        *((p, 2) for p in ("1340", "1345", "1348", "147", "172", "178", "184", "195")),
        ("165", 1),
        ("1703", 1),
    ),
    "unicom": (
        *((p, 6) for p in ("130", "131", "132", "155", "156", "185", "186")),
        *((p, 3) for p in ("145", "166", "175", "176", "196")),
        ("167", 1),
        ("171", 1),
        ("1704", 1),
    ),
    "telecom": (
        *((p, 6) for p in ("133", "153", "180", "181", "189")),
        *((p, 3) for p in ("173", "177", "149", "190", "191", "193", "199")),
        ("162", 1),
        ("1700", 1),
        ("17401", 1),
    ),
    "broadnet": (("192", 1),),
}
# Share of residents in each audience segment (DOMAIN.md's targeted content); the rest have
# none. Some residents get a second, compatible segment.
SEGMENT_SHARES: tuple[tuple[str, float], ...] = (
    ("student", 0.10),
    ("worker", 0.08),
    ("business_owner", 0.05),
    ("single_woman_20_40", 0.04),
    ("finance_staff", 0.02),
    ("elderly", 0.18),
    ("job_seeker", 0.04),
    ("public_employee", 0.03),
)
SECOND_SEGMENT: dict[str, tuple[str, ...]] = {
    "single_woman_20_40": ("worker", "finance_staff", "public_employee", "job_seeker"),
    "worker": ("job_seeker",),
    "business_owner": ("finance_staff",),
}
SECOND_SHARE = 0.15
# Ported numbers: the row names a carrier other than the segment's (the explicit column wins).
PORTED_SHARE = 0.01
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
    "程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦傅方白邹孟熊秦邱江尹薛钱顾俞章"
)
GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌海燕云飞鹏宇浩"
    "晨欣怡佳琪子涵梓轩雨萱嘉俊婷雪梅林春晓波峰辉"
)
COLUMNS = ("phone", "town", "village", "name", "household", "carrier", "residence", "segments")


def default_count(district: District, coverage: float = COVERAGE) -> int:
    """One row per resident for `coverage` of each village's population."""
    return sum(round(v.population * coverage) for _t, v in district.villages())


class _NumberPool:
    """Unique numbers under one prefix: an affine permutation of a counter over the suffixes."""

    def __init__(self, prefix: str, rng: random.Random) -> None:
        self.prefix = prefix
        self.digits = 11 - len(prefix)
        self.space = 10**self.digits
        # Odd and not a multiple of 5: coprime with 10**k, so k -> (a*k + b) mod 10**k is a
        # bijection and never repeats a suffix.
        a = rng.randrange(self.space // 3, self.space)
        self.a = a + (1 if a % 2 == 0 else 0)
        if self.a % 5 == 0:
            self.a += 2
        self.b = rng.randrange(self.space)
        self.used = 0

    def take(self) -> str:
        if self.used >= self.space:
            raise ValueError(f"number segment {self.prefix} exhausted")
        suffix = (self.a * self.used + self.b) % self.space
        self.used += 1
        return f"{self.prefix}{suffix:0{self.digits}d}"


def _carrier_weights(district: District, total: int) -> dict[str, float]:
    """Subscribers' proportions, so that each carrier's count reaches its subscribers when the
    list is at least as long as the subscribers together (the carriers' quota is one message
    per subscriber per week)."""
    carriers = {c.id: c.subscribers for c in district.carriers if c.id in PREFIXES}
    if not carriers or not sum(carriers.values()):
        return {"mobile": 1.0}
    return {k: v / sum(carriers.values()) for k, v in carriers.items()}


def _segments(rng: random.Random) -> str:
    draw = rng.random()
    for seg, share in SEGMENT_SHARES:
        if draw < share:
            second = SECOND_SEGMENT.get(seg)
            if second and rng.random() < SECOND_SHARE:
                return f"{seg};{rng.choice(second)}"
            return seg
        draw -= share
    return ""


def generate(
    district: District, count: int | None = None, seed: int = DEFAULT_SEED
) -> Iterator[tuple[str, ...]]:
    """Rows of a recipient CSV in COLUMNS order (without the header), deterministic for a seed.

    Villages get rows in proportion to their population (largest remainder, so the rows add up
    to `count`); carriers are drawn in their subscribers' proportions.
    """
    rng = random.Random(seed)
    total = default_count(district) if count is None else count
    villages = list(district.villages())
    if not villages or total <= 0:
        return
    weights = _carrier_weights(district, total)
    pools = {
        carrier: (
            [_NumberPool(p, rng) for p, _w in PREFIXES[carrier]],
            [w for _p, w in PREFIXES[carrier]],
        )
        for carrier in PREFIXES
    }
    carrier_ids = list(weights)
    carrier_w = [weights[c] for c in carrier_ids]
    others = {c: [o for o in PREFIXES if o != c and o != "broadnet"] for c in PREFIXES}
    population = sum(v.population for _t, v in villages) or 1
    shares = _apportion(total, [v.population / population for _t, v in villages])
    for (town, village), share in zip(villages, shares, strict=True):
        migrant_rows = (
            round(share * (village.migrant or 0) / village.population) if village.population else 0
        )
        household = 0
        left = 0
        residence = ""
        for i in range(share):
            if left == 0:
                household += 1
                left = rng.randint(2, 4)
                surname = rng.choice(SURNAMES)
                if village.registered is not None:
                    residence = "migrant" if i < migrant_rows else "registered"
            left -= 1
            carrier = rng.choices(carrier_ids, carrier_w)[0]
            explicit = ""
            number_carrier = carrier
            if rng.random() < PORTED_SHARE:
                number_carrier = rng.choice(others[carrier])
                explicit = carrier
            numbers, prefix_w = pools[number_carrier]
            phone = rng.choices(numbers, prefix_w)[0].take()
            given = "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))
            yield (
                phone,
                town.id,
                village.id,
                surname + given,
                f"{village.id}-{household:05d}",
                explicit,
                residence,
                _segments(rng),
            )


def _apportion(total: int, fractions: list[float]) -> list[int]:
    """Split `total` by `fractions` with the largest-remainder method (sums exactly)."""
    raw = [total * f for f in fractions]
    parts = [int(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def write_csv(
    district: District,
    path: Path | None,
    count: int | None = None,
    seed: int = DEFAULT_SEED,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write a UTF-8 CSV with a header (to stdout when `path` is None); returns the rows.

    `on_progress(rows written)` is called every few thousand rows (a CLI progress bar).
    """
    if path is None:
        return _write(district, sys.stdout, count, seed, on_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        return _write(district, fh, count, seed, on_progress)


def _write(
    district: District,
    fh: TextIO,
    count: int | None,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    writer = csv.writer(fh)
    writer.writerow(COLUMNS)
    written = 0
    for row in generate(district, count, seed):
        writer.writerow(row)
        written += 1
        if on_progress is not None and written % 2000 == 0:
            on_progress(written)
    if on_progress is not None:
        on_progress(written)
    return written
