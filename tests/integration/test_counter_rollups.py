"""The (day, town) and (day, carrier) roll-ups always equal the sums of the fine counters.

Town and carrier windows read the roll-ups, so any drift would change `pingan quota status`:
these tests bump, roll back, rebuild and migrate, and compare the roll-ups with the fine rows
summed in SQL and with the increments summed in Python.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, delete, func, insert, select

from scheduler.db import alembic_config, make_engine, transaction, upgrade
from scheduler.models import CarrierDayCounter, SendCounter, TownDayCounter
from scheduler.store.counters import CounterIncrement, bump_counters, rebuild_rollups
from scheduler.store.quotas import counter_days, sum_counters

DAYS = [dt.date(2022, 10, 1) + dt.timedelta(days=i) for i in range(5)]
TOWNS = ["a", "b", "c"]
VILLAGES = ["v1", "v2"]
CARRIERS = ["mobile", "unicom", "telecom"]


def _increments(seed: int, n: int) -> list[CounterIncrement]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sent = rng.choice([0, 1, 1, 2])
        out.append(
            CounterIncrement(
                rng.choice(DAYS),
                rng.choice(TOWNS),
                rng.choice(VILLAGES),
                rng.choice(CARRIERS),
                sent=sent,
                # a delivery report can also take one back (delivered, then a late failure)
                delivered=rng.choice([-1, 0, 0, 1]) if sent == 0 else rng.randint(0, sent),
            )
        )
    return out


def _fine_sums(engine: Engine, col: Any) -> dict[tuple[Any, ...], tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                SendCounter.day, col, func.sum(SendCounter.sent), func.sum(SendCounter.delivered)
            )
            .group_by(SendCounter.day, col)
            .having((func.sum(SendCounter.sent) != 0) | (func.sum(SendCounter.delivered) != 0))
        )
        return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


def _rollup(engine: Engine, table: Any, col: Any) -> dict[tuple[Any, ...], tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(table.day, col, table.sent, table.delivered))
        return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows if r[2] or r[3]}


def _assert_rollups_match(engine: Engine) -> None:
    assert _rollup(engine, TownDayCounter, TownDayCounter.town_id) == _fine_sums(
        engine, SendCounter.town_id
    )
    assert _rollup(engine, CarrierDayCounter, CarrierDayCounter.carrier) == _fine_sums(
        engine, SendCounter.carrier
    )


def test_bumps_keep_rollups_equal_to_the_fine_rows(engine: Engine) -> None:
    incs = _increments(15, 400)
    for i in range(0, len(incs), 37):  # dispatcher-sized transactions of varied length
        with transaction(engine) as s:
            bump_counters(s, incs[i : i + 37])
    _assert_rollups_match(engine)

    sent_by_town: Counter[str] = Counter()
    delivered_by_carrier: Counter[str] = Counter()
    for inc in incs:
        if DAYS[1] <= inc.day <= DAYS[3]:
            sent_by_town[inc.town_id] += inc.sent
            delivered_by_carrier[inc.carrier] += inc.delivered
    towns = sum_counters(engine, first_day=DAYS[1], last_day=DAYS[3], by="town")
    carriers = sum_counters(engine, first_day=DAYS[1], last_day=DAYS[3], by="carrier")
    for town in TOWNS:
        assert towns.get((town,), (0, 0))[0] == sent_by_town[town]
    for carrier in CARRIERS:
        assert carriers.get((carrier,), (0, 0))[1] == delivered_by_carrier[carrier]
    # Limited to towns, the town roll-up and the fine rows (the carrier path) agree too.
    limited = sum_counters(engine, first_day=DAYS[0], last_day=DAYS[4], by="town", towns=["b"])
    fine = sum_counters(engine, first_day=DAYS[0], last_day=DAYS[4], by="carrier", towns=["b"])
    assert limited[("b",)][0] == sum(v[0] for v in fine.values())
    days = counter_days(engine, first_day=DAYS[0], last_day=DAYS[4], by="carrier")
    expected_days: dict[str, Counter[dt.date]] = {}
    for inc in incs:
        expected_days.setdefault(inc.carrier, Counter())[inc.day] += inc.sent
    assert {k[0]: {d: v[0] for d, v in per.items() if v[0]} for k, per in days.items()} == {
        c: {d: n for d, n in per.items() if n} for c, per in expected_days.items()
    }


def test_rollups_roll_back_with_the_message(engine: Engine) -> None:
    def failing_send() -> None:
        with transaction(engine) as s:
            bump_counters(s, _increments(1, 20))
            raise RuntimeError("the message update failed")

    with pytest.raises(RuntimeError):
        failing_send()
    with engine.connect() as conn:
        assert conn.execute(select(TownDayCounter)).all() == []
        assert conn.execute(select(CarrierDayCounter)).all() == []


def test_rebuild_rollups_from_the_fine_rows(engine: Engine) -> None:
    with transaction(engine) as s:
        bump_counters(s, _increments(2, 200))
    before_town = _rollup(engine, TownDayCounter, TownDayCounter.town_id)
    before_carrier = _rollup(engine, CarrierDayCounter, CarrierDayCounter.carrier)
    with transaction(engine) as s:
        s.execute(delete(TownDayCounter))
        s.execute(
            insert(CarrierDayCounter).values(day=DAYS[0], carrier="bogus", sent=9, delivered=9)
        )
        rebuild_rollups(s)
    assert _rollup(engine, TownDayCounter, TownDayCounter.town_id) == before_town
    assert _rollup(engine, CarrierDayCounter, CarrierDayCounter.carrier) == before_carrier
    _assert_rollups_match(engine)


def test_migration_backfills_rollups_from_existing_counters(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        script = ScriptDirectory.from_config(alembic_config(eng))
        revision = script.get_revision("0012")
        assert revision is not None
        previous = revision.down_revision
        assert isinstance(previous, str)
        upgrade(eng, previous)
        totals: Counter[tuple[dt.date, str, str, str]] = Counter()
        delivered: Counter[tuple[dt.date, str, str, str]] = Counter()
        for inc in _increments(3, 300):
            key = (inc.day, inc.town_id, inc.village_id, inc.carrier)
            totals[key] += inc.sent
            delivered[key] += inc.delivered
        with eng.begin() as conn:
            conn.execute(
                insert(SendCounter),
                [
                    {
                        "day": k[0],
                        "town_id": k[1],
                        "village_id": k[2],
                        "carrier": k[3],
                        "sent": totals[k],
                        "delivered": delivered[k],
                    }
                    for k in totals
                ],
            )
        upgrade(eng)
        _assert_rollups_match(eng)
        with eng.connect() as conn:
            assert conn.execute(select(func.count()).select_from(TownDayCounter)).scalar_one() > 0
    finally:
        eng.dispose()
