"""The shared rate limits' arithmetic (scheduler.ratelimit.assign): which second, and where in
it, each message may go; the database part is tested with real dispatchers at the fake
(tests/integration/test_dispatch_workers.py)."""

from __future__ import annotations

from collections import Counter

from scheduler.ratelimit import OVERALL, Limits, assign, carrier_key


def _per_second(times: list[float]) -> Counter[int]:
    return Counter(int(t) for t in times)


def test_a_second_holds_its_limit_spread_across_it() -> None:
    limits = Limits(10)
    times, changed = assign([limits.need("mobile", 1)] * 25, {}, limits.capacities(), 100.0)
    assert _per_second(times) == {100: 10, 101: 10, 102: 5}
    assert times[:3] == [100.0, 100.1, 100.2]  # spread, not all at the second's start
    assert changed == {(OVERALL, 100), (OVERALL, 101), (OVERALL, 102)}


def test_what_others_took_is_not_taken_again() -> None:
    limits = Limits(10)
    taken = {(OVERALL, 100): 8, (OVERALL, 101): 10}
    times, _ = assign([limits.need("mobile", 1)] * 5, taken, limits.capacities(), 100.0)
    assert _per_second(times) == {100: 2, 102: 3}
    assert taken[(OVERALL, 100)] == 10 and taken[(OVERALL, 102)] == 3


def test_the_part_of_the_second_gone_by_is_not_handed_out() -> None:
    limits = Limits(10)
    times, _ = assign([limits.need("mobile", 1)] * 5, {}, limits.capacities(), 100.75)
    # 100.75: eight tenths of second 100 are gone (its last two places are left).
    assert _per_second(times) == {100: 2, 101: 3}
    assert min(times) >= 100.75


def test_carrier_segments_and_the_overall_limit_hold_together() -> None:
    limits = Limits(50, {"mobile": 20})
    needs = [limits.need("mobile", 2)] * 30 + [limits.need("unicom", 1)] * 30
    taken: dict[tuple[str, int], int] = {}
    times, _ = assign(needs, taken, limits.capacities(), 100.0)
    mobile = _per_second(times[:30])
    assert max(mobile.values()) == 10  # 20 segments a second, 2 each
    assert max(_per_second(times).values()) <= 50
    # Unicom is not held behind mobile: it fills the overall limit's room in second 100.
    assert _per_second(times[30:]) == {100: 30}
    assert all(v <= 20 for (k, _), v in taken.items() if k == carrier_key("mobile"))


def test_a_message_longer_than_its_carriers_second_takes_all_of_it() -> None:
    limits = Limits(100, {"telecom": 3})
    times, _ = assign([limits.need("telecom", 5)] * 2, {}, limits.capacities(), 100.0)
    assert _per_second(times) == {100: 1, 101: 1}


def test_a_limit_below_one_a_second_counts_as_one() -> None:
    assert Limits(0.5).capacities() == {OVERALL: 1}
