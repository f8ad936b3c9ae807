"""Building test data through the same tables the importer fills (synthetic numbers only)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, insert

from scheduler.config import District
from scheduler.models import Recipient

_PREFIXES = (("138", "mobile"), ("186", "unicom"), ("189", "telecom"))
_SEGMENTS = ("student", "elderly", "business_owner", "job_seeker", "finance_staff")


def recipient_rows(district: District, n: int, *, start: int = 0) -> list[dict[str, Any]]:
    villages = list(district.villages())
    now = dt.datetime(2022, 9, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(start, start + n):
        prefix, carrier = _PREFIXES[i % 3]
        town, village = villages[i % len(villages)]
        segs = [s for k, s in enumerate(_SEGMENTS) if i % (k + 4) == 0]
        rows.append(
            {
                "phone": f"{prefix}{i:08d}",
                "name": f"测试{i}",
                "town_id": town.id,
                "village_id": village.id,
                "household": None,
                "carrier": carrier,
                "residence": "registered" if i % 4 else "migrant",
                "segments": f";{';'.join(segs)};" if segs else "",
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def add_recipients(engine: Engine, district: District, n: int, *, start: int = 0) -> None:
    rows = recipient_rows(district, n, start=start)
    with engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(Recipient), rows[i : i + 5000])
