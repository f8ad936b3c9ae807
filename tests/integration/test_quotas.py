"""Quota rules, windows, targets and attainment: unit tests, then hand-built message histories
counted on every backend, the counters bumped as the dispatcher and webhook bump them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, delete, select, update

from scheduler.config import District, load_district
from scheduler.db import transaction
from scheduler.exceptions import ConfigError, UnknownName
from scheduler.models import Message, MessageBody, MessageState, Occurrence, Recipient, SendCounter
from scheduler.quotas import (
    QuotaRule,
    Status,
    Window,
    attainment,
    evaluate,
    find_rule,
    load_rules,
    parse_week,
    select_windows,
    subjects,
    target_of,
    targets,
    window_containing,
    windows,
    windows_overlapping,
)
from scheduler.store.counters import CounterIncrement, bump_counters, local_day, rebuild_counters
from scheduler.store.retention import period_of

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Shanghai")


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> dt.datetime:
    """An aware instant given as district-local wall time."""
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=TZ)


def rule(**kw: Any) -> QuotaRule:
    data: dict[str, Any] = {
        "id": "r",
        "subject": "town",
        "window": "week",
        "start": "2022-10-01",
        "end": "2022-10-31",
        "measure": "messages_sent",
        "base": "population",
        "share": "50%",
    }
    data.update(kw)
    return QuotaRule.model_validate(data)


MILESTONES = [
    {"by": "2022-03-31", "share": "8%"},
    {"by": "2022-04-30", "share": "25%"},
    {"by": "2022-05-31", "share": "35%"},
    {"by": "2022-06-30", "share": "45%"},
]


def cumulative(**kw: Any) -> QuotaRule:
    return rule(
        subject="village",
        window="cumulative",
        start="2022-03-15",
        end="2022-06-30",
        measure="people_reached",
        share=None,
        milestones=MILESTONES,
        **kw,
    )


@pytest.fixture(scope="module")
def repo_district() -> District:
    return load_district(ROOT / "config")


@pytest.fixture(scope="module")
def small() -> District:
    """A district small enough to reach its targets by hand."""
    return District.model_validate(
        {
            "district": {
                "id": "t",
                "name": "测试区",
                "short_name": "测试",
                "office": "测试区平安办",
                "signature": "【平安测试】",
                "opt_out": "回T退订",
                "survey": {
                    "household_start": "2022-11-01",
                    "household_end": "2022-11-15",
                    "phone_start": "2022-11-01",
                    "phone_end": "2022-12-31",
                },
            },
            "towns": [
                {
                    "id": "a",
                    "name": "甲镇",
                    "population": 10,
                    "households": 4,
                    "villages": [
                        {
                            "id": "v1",
                            "name": "一村",
                            "population": 100 // 10,
                            "registered": 6,
                            "migrant": 4,
                        },
                    ],
                },
                {
                    "id": "b",
                    "name": "乙镇",
                    "population": 120,
                    "households": 40,
                    "villages": [
                        {"id": "v1", "name": "乙一村", "population": 100},
                        {"id": "v2", "name": "乙二村", "population": 20},
                    ],
                },
                {"id": "c", "name": "丙镇", "population": 4, "households": 2},
            ],
            "carriers": [
                {"id": "mobile", "name": "中国移动", "subscribers": 6},
                {"id": "unicom", "name": "中国联通", "subscribers": 4},
                {"id": "telecom", "name": "中国电信", "subscribers": 2},
            ],
        }
    )


# --------------------------------------------------------------------------- unit: targets


def test_seed_003_table_exactly(repo_district: District) -> None:
    rules = load_rules(ROOT / "config", repo_district)
    table = targets(find_rule(rules, "village-outreach"), repo_district)
    got = [(r.name, r.base, r.targets) for r in table.rows]
    assert got == [
        ("王位山", 2836, (227, 709, 993, 1276)),
        ("虎山", 2077, (166, 519, 727, 935)),
        ("清波", 2713, (217, 678, 950, 1221)),
        ("赐璧", 2560, (205, 640, 896, 1152)),
        ("青山", 2566, (205, 642, 898, 1155)),
        ("吴四坊", 753, (60, 188, 264, 339)),
        ("派出所", 6704, (536, 1676, 2346, 3017)),
    ]
    assert (table.total.name, table.total.base, table.total.targets) == (
        "合计",
        20209,
        (1617, 5052, 7073, 9094),
    )
    # The total comes from the total base: the rounded rows add up to one less at 8%.
    assert sum(r.targets[0] for r in table.rows) == 1616


def test_round_half_up_not_to_even() -> None:
    assert target_of(5, Decimal("0.5")) == 3  # round(2.5) would give 2
    assert target_of(7, Decimal("0.5")) == 4
    assert target_of(753, Decimal("0.35")) == 264  # 263.55
    assert target_of(2077, Decimal("0.25")) == 519  # 519.25
    assert target_of(0, Decimal("0.8")) == 0


def test_share_accepts_percent_and_float_exactly() -> None:
    assert rule(share="8%").share == Decimal("0.08")
    assert rule(share=0.08).share == Decimal("0.08")
    assert rule(share="0.35").share == Decimal("0.35")


def test_every_domain_quota_is_configured(repo_district: District) -> None:
    rules = {r.id: r for r in load_rules(ROOT / "config", repo_district)}
    tw = rules["town-weekly-oct"]
    assert (tw.subject, tw.window, tw.share, tw.measure) == (
        "town",
        "week",
        Decimal("0.5"),
        "messages_sent",
    )
    tm = rules["town-monthly-novdec"]
    assert [w.label for w in windows(tm)] == ["2022-11", "2022-12"]
    assert tm.share == Decimal("0.8")
    cm = rules["carrier-monthly"]
    assert [w.label for w in windows(cm)] == ["2022-10", "2022-11", "2022-12"]
    assert (cm.base, cm.share) == ("subscribers", Decimal("0.8"))
    cw = rules["carrier-weekly"]
    assert (cw.base, cw.share, len(windows(cw))) == ("subscribers", Decimal(1), 13)
    vr = rules["village-outreach-residence"]
    assert vr.by_residence
    rows = targets(vr, repo_district).rows
    assert rows[0].name == "龙山社区(户籍)"
    assert (rows[0].base, rows[1].base) == (1700, 700)


def test_target_total_of_town_and_carrier_rules(repo_district: District) -> None:
    rules = load_rules(ROOT / "config", repo_district)
    t = targets(find_rule(rules, "carrier-monthly"), repo_district)
    assert [r.targets[0] for r in t.rows] == [14400, 6560, 7040]
    assert t.total.base == 35000
    assert t.total.targets == (28000,)


# --------------------------------------------------------------------------- unit: windows


def test_weeks_whose_monday_lies_in_october() -> None:
    ws = windows(rule())
    assert [w.label for w in ws] == ["2022-W40", "2022-W41", "2022-W42", "2022-W43", "2022-W44"]
    assert (ws[0].start, ws[0].end) == (dt.date(2022, 10, 3), dt.date(2022, 10, 9))
    # The last week crosses the month end: Monday 31 October to Sunday 6 November.
    assert (ws[-1].start, ws[-1].end) == (dt.date(2022, 10, 31), dt.date(2022, 11, 6))
    assert all(w.start.weekday() == 0 and (w.end - w.start).days == 6 for w in ws)


def test_window_containing_and_parse_week() -> None:
    r = rule()
    assert window_containing(r, dt.date(2022, 11, 6)) == windows(r)[-1]
    assert window_containing(r, dt.date(2022, 11, 7)) is None
    assert window_containing(r, dt.date(2022, 10, 2)) is None  # its Monday is in September
    assert parse_week("2022-W44") == dt.date(2022, 10, 31)
    with pytest.raises(ValueError, match="2022-W41"):
        parse_week("week 44")


def test_month_windows_clip_to_active_period() -> None:
    r = rule(window="month", start="2022-10-15", end="2022-12-10")
    assert [(w.label, w.start, w.end) for w in windows(r)] == [
        ("2022-10", dt.date(2022, 10, 15), dt.date(2022, 10, 31)),
        ("2022-11", dt.date(2022, 11, 1), dt.date(2022, 11, 30)),
        ("2022-12", dt.date(2022, 12, 1), dt.date(2022, 12, 10)),
    ]


def test_cumulative_window_carries_milestones() -> None:
    (w,) = windows(cumulative())
    assert (w.label, w.start, w.end) == (
        "2022-03..2022-06",
        dt.date(2022, 3, 15),
        dt.date(2022, 6, 30),
    )
    assert [m.share for m in w.milestones] == [Decimal(x) for x in ("0.08", "0.25", "0.35", "0.45")]


def test_window_bounds_are_local_midnights() -> None:
    w = Window("2022-W44", dt.date(2022, 10, 31), dt.date(2022, 11, 6))
    start, end = w.bounds(TZ)
    assert start == dt.datetime(2022, 10, 30, 16, tzinfo=dt.UTC)
    assert end == dt.datetime(2022, 11, 6, 16, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- unit: pace


def test_pace_and_status_in_a_week(small: District) -> None:
    r = rule()
    w = windows(r)[-1]  # 2022-W44
    a, b, c = subjects(r, small)  # targets 5, 60, 2
    now = local(2022, 11, 3)  # three of seven days gone
    on = evaluate(r, w, a, 3, now=now, tz=TZ)
    assert (on.target, on.expected, on.status) == (5, 2, Status.ON_TRACK)
    assert on.elapsed == Decimal("0.4286")
    assert on.pace == Decimal("140.0")
    assert on.projected == 7
    assert (on.attainment, on.shortfall) == (Decimal("60.0"), 2)
    behind = evaluate(r, w, b, 20, now=now, tz=TZ)
    assert (behind.target, behind.expected, behind.status) == (60, 26, Status.BEHIND)
    assert behind.projected == 47
    met = evaluate(r, w, c, 2, now=now, tz=TZ)
    assert met.status is Status.MET and met.shortfall == 0
    # Once the window is over, short of the target is behind, whatever the pace was.
    after = evaluate(r, w, a, 3, now=local(2022, 11, 7), tz=TZ)
    assert (after.status, after.elapsed, after.projected) == (Status.BEHIND, Decimal(1), 3)
    # Before it starts nothing is due yet.
    before = evaluate(r, w, a, 0, now=local(2022, 10, 30), tz=TZ)
    assert (before.status, before.pace, before.projected) == (Status.ON_TRACK, None, None)


def test_cumulative_pace_follows_the_milestones(small: District) -> None:
    r = cumulative(towns=["b"])
    (w,) = windows(r)
    v1 = subjects(r, small)[0]  # population 100: 8, 25, 35, 45
    # Half-way through April: 8 + (25 - 8) × 15/30 = 16.5 due.
    row = evaluate(r, w, v1, 16, now=local(2022, 4, 16), tz=TZ, milestone_actuals=[9, None])
    assert row.expected == 17 and row.status is Status.BEHIND
    assert row.target == 45
    assert [(m.target, m.actual, m.met) for m in row.milestones] == [
        (8, 9, True),
        (25, None, None),
        (35, None, None),
        (45, None, None),
    ]
    assert evaluate(r, w, v1, 17, now=local(2022, 4, 16), tz=TZ).status is Status.ON_TRACK
    # Before the first milestone: linear from 0 at the start (15 March) to 8 by 1 April.
    early = evaluate(r, w, v1, 4, now=local(2022, 3, 24), tz=TZ)
    assert early.expected == 4 and early.status is Status.ON_TRACK


# --------------------------------------------------------------------------- unit: config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "quotas.yaml").write_text(text, encoding="utf-8")
    return tmp_path


GOOD = """
rules:
  - id: w
    subject: town
    window: week
    start: 2022-10-01
    end: 2022-10-31
    measure: messages_sent
    base: population
    share: 50%
"""


def test_load_rules_missing_file_means_none(tmp_path: Path, small: District) -> None:
    assert load_rules(tmp_path, small) == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("share: 50%", "share: 150%"), "rules[0].share"),
        (GOOD.replace("window: week", "window: fortnight"), "rules[0].window"),
        (GOOD.replace("base: population", "base: subscribers"), "carrier rules"),
        (GOOD + "    towns: [nowhere]\n", "rules[0].towns[0]: unknown town 'nowhere'"),
        (GOOD + "    milestones: [{by: 2022-10-31, share: 5%}]\n", "only cumulative"),
        (GOOD + GOOD.replace("rules:\n", ""), "duplicate rule ids: w"),
        (
            GOOD.replace("subject: town", "subject: village") + "    by_residence: true\n",
            "by_residence",
        ),
        ("rules: [\n", "line"),
    ],
)
def test_bad_rules_name_file_and_field(
    tmp_path: Path, small: District, text: str, where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_rules(write(tmp_path, text), small)
    assert str(tmp_path / "quotas.yaml") in str(info.value)
    assert where in str(info.value)


def test_by_residence_needs_the_split(tmp_path: Path, small: District) -> None:
    text = (
        GOOD.replace("subject: town", "subject: village").replace(
            "measure: messages_sent", "measure: people_reached"
        )
        + "    by_residence: true\n    towns: [乙镇]\n"
    )
    with pytest.raises(ConfigError, match=r"rules\[0\].by_residence: village b/v1 has no"):
        load_rules(write(tmp_path, text), small)
    (ok,) = load_rules(write(tmp_path, text.replace("[乙镇]", "[甲镇]")), small)
    assert ok.towns == ("a",)  # names resolve to ids


def test_as_subject_refuses_what_cannot_be_counted() -> None:
    assert rule().as_subject("village").subject == "village"
    with pytest.raises(UnknownName, match="cannot be counted by carrier"):
        rule().as_subject("carrier")


# --------------------------------------------------------------------------- integration


class History:
    """Writes messages as the dispatcher and the status webhook will, counters included."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0
        with transaction(engine) as s:
            body = MessageBody(
                digest="d" * 64,
                text="【平安测试】谨防电信诈骗",
                template_name="t",
                template_hash="h" * 64,
                chars=12,
                segments=1,
            )
            s.add(body)
            s.flush()
            self.body_id = body.id

    def recipient(self, rid: int, town: str, village: str, residence: str | None = None) -> None:
        now = local(2022, 1, 1)
        with transaction(self.engine) as s:
            s.add(
                Recipient(
                    id=rid,
                    phone=f"138{rid:08d}",
                    town_id=town,
                    village_id=village,
                    carrier="mobile",
                    residence=residence,
                    segments="",
                    created_at=now,
                    updated_at=now,
                )
            )

    def send(
        self,
        at: dt.datetime,
        town: str,
        village: str = "v1",
        carrier: str = "mobile",
        *,
        recipient: int | None = None,
        delivered: bool = False,
    ) -> int:
        self.n += 1
        with transaction(self.engine) as s:
            occ = Occurrence(
                campaign="weekly",
                scheduled_at=at + dt.timedelta(microseconds=self.n),
                created_at=at,
            )
            s.add(occ)
            s.flush()
            msg = Message(
                occurrence_id=occ.id,
                recipient_id=recipient if recipient is not None else 10_000 + self.n,
                phone="13800000000",
                town_id=town,
                village_id=village,
                carrier=carrier,
                body_id=self.body_id,
                segments=1,
                state=MessageState.SENT,
                queued_at=at,
                sent_at=at,
                period=period_of(at, TZ),
            )
            s.add(msg)
            s.flush()
            bump_counters(s, [CounterIncrement(local_day(at, TZ), town, village, carrier, sent=1)])
            mid = msg.id
        if delivered:
            self.status(mid, MessageState.DELIVERED)
        return mid

    def status(self, mid: int, state: MessageState) -> None:
        """A delivery report: delivered counts on the day the message was sent."""
        with transaction(self.engine) as s:
            msg = s.get(Message, mid)
            assert msg is not None and msg.sent_at is not None
            was = msg.state
            s.execute(update(Message).where(Message.id == mid).values(state=state))
            delta = int(state == MessageState.DELIVERED) - int(was == MessageState.DELIVERED)
            if delta:
                inc = CounterIncrement(
                    local_day(msg.sent_at, TZ),
                    msg.town_id,
                    msg.village_id,
                    msg.carrier,
                    delivered=delta,
                )
                bump_counters(s, [inc])


def by_key(rows: list[Any]) -> dict[str, Any]:
    return {r.subject.key: r for r in rows}


def test_bump_counters_aggregates_and_upserts(engine: Engine) -> None:
    day = dt.date(2022, 10, 10)
    with transaction(engine) as s:
        bump_counters(
            s,
            [
                CounterIncrement(day, "a", "v1", "mobile", sent=1),
                CounterIncrement(day, "a", "v1", "mobile", sent=1, delivered=1),
                CounterIncrement(day, "b", "v1", "unicom", sent=1),
                CounterIncrement(day, "b", "v2", "unicom"),  # nothing to write
            ],
        )
    with transaction(engine) as s:
        bump_counters(s, [CounterIncrement(day, "a", "v1", "mobile", sent=2, delivered=-1)])
        bump_counters(s, [])
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                SendCounter.town_id, SendCounter.village_id, SendCounter.sent, SendCounter.delivered
            ).order_by(SendCounter.town_id)
        ).all()
    assert [tuple(r) for r in rows] == [("a", "v1", 4, 0), ("b", "v1", 1, 0)]


def test_bump_counters_rolls_back_with_the_message(engine: Engine) -> None:
    def failing_send() -> None:
        with transaction(engine) as s:
            inc = CounterIncrement(dt.date(2022, 10, 10), "a", "v1", "mobile", sent=1)
            bump_counters(s, [inc])
            raise RuntimeError("the message update failed")

    with pytest.raises(RuntimeError):
        failing_send()
    with engine.connect() as conn:
        assert conn.execute(select(SendCounter)).all() == []


def test_weekly_sent_across_the_month_end(engine: Engine, small: District) -> None:
    h = History(engine)
    h.send(local(2022, 10, 30, 23, 59), "a")  # Sunday of W43: not counted
    h.send(local(2022, 10, 31, 0, 0, 30), "a")  # Monday of W44, still 30 Oct in UTC
    for i in range(20):
        h.send(local(2022, 11, 1, 9, i), "b", "v2" if i % 2 else "v1")
    h.send(local(2022, 11, 1, 9), "c")
    h.send(local(2022, 11, 2, 9), "c")
    r = rule()
    w = windows(r)[-1]
    rows = attainment(engine, r, w, small, now=local(2022, 11, 3), tz=TZ)
    assert [(x.subject.key, x.actual, x.target, x.expected, x.status) for x in rows] == [
        ("c", 2, 2, 1, Status.MET),
        ("b", 20, 60, 26, Status.BEHIND),
        ("a", 1, 5, 2, Status.BEHIND),
    ]
    assert [(x.rank, x.laggard) for x in rows] == [(1, False), (2, True), (3, True)]
    h.send(local(2022, 11, 2, 12), "a")
    assert (
        by_key(attainment(engine, r, w, small, now=local(2022, 11, 3), tz=TZ))["a"].status
        is Status.ON_TRACK
    )
    h.send(local(2022, 11, 6, 23, 30), "a")  # Sunday night, 6 Nov 15:30 UTC
    h.send(local(2022, 11, 7, 0, 10), "a")  # next Monday: not counted
    # A week later the window is over: actual 3 of 5 in town a.
    done = by_key(attainment(engine, r, w, small, now=local(2022, 11, 14), tz=TZ))
    assert (done["a"].actual, done["a"].status, done["a"].shortfall) == (3, Status.BEHIND, 2)
    # The week before counts the Sunday-night message.
    w43 = by_key(attainment(engine, r, windows(r)[-2], small, now=local(2022, 11, 14), tz=TZ))
    assert w43["a"].actual == 1
    # By village: the same counts split, against each village's own population.
    v = by_key(
        attainment(engine, r.as_subject("village"), w, small, now=local(2022, 11, 14), tz=TZ)
    )
    assert (v["b/v1"].actual, v["b/v1"].target, v["b/v2"].actual, v["b/v2"].target) == (
        10,
        50,
        10,
        10,
    )
    assert v["b/v2"].status is Status.MET


def test_monthly_delivered_counts_on_the_send_day(engine: Engine, small: District) -> None:
    h = History(engine)
    late = h.send(local(2022, 10, 31, 23, 50), "c", delivered=True)  # October's, not November's
    for i in range(4):
        h.send(local(2022, 11, 3 + i, 10), "c", delivered=i < 3)
    oops = h.send(local(2022, 11, 9, 10), "c", delivered=True)
    h.status(oops, MessageState.UNDELIVERED)  # a late report undoes a delivery
    r_del = rule(
        window="month",
        start="2022-11-01",
        end="2022-12-31",
        share="80%",
        measure="messages_delivered",
    )
    nov = windows(r_del)[0]
    now = local(2022, 12, 5)
    c = by_key(attainment(engine, r_del, nov, small, now=now, tz=TZ))["c"]
    assert (c.actual, c.target, c.status) == (3, 3, Status.MET)
    r_sent = r_del.model_copy(update={"measure": "messages_sent"})
    assert by_key(attainment(engine, r_sent, nov, small, now=now, tz=TZ))["c"].actual == 5
    oct_rule = rule(window="month", measure="messages_delivered")
    octo = by_key(attainment(engine, oct_rule, windows(oct_rule)[0], small, now=now, tz=TZ))
    assert octo["c"].actual == 1
    assert late > 0


def test_carrier_monthly_and_weekly(engine: Engine, small: District) -> None:
    h = History(engine)
    for i in range(5):
        h.send(local(2022, 10, 10, 9, i), "a", carrier="mobile", delivered=True)
    for i in range(4):
        h.send(local(2022, 10, 11, 9, i), "b", carrier="unicom", delivered=i < 2)
    h.send(local(2022, 10, 20, 9), "b", carrier="telecom")
    monthly = rule(
        subject="carrier",
        base="subscribers",
        window="month",
        end="2022-12-31",
        share="80%",
        sources="own",  # carrier rules count reported sends unless told otherwise
    )
    rows = attainment(engine, monthly, windows(monthly)[0], small, now=local(2022, 11, 1), tz=TZ)
    assert [(x.subject.key, x.actual, x.target, x.status) for x in rows] == [
        ("unicom", 4, 3, Status.MET),  # 133%
        ("mobile", 5, 5, Status.MET),
        ("telecom", 1, 2, Status.BEHIND),
    ]
    weekly = monthly.model_copy(update={"window": "week", "share": Decimal(1)})
    w41 = window_containing(weekly, dt.date(2022, 10, 12))
    assert w41 is not None and w41.label == "2022-W41"
    wk = by_key(attainment(engine, weekly, w41, small, now=local(2022, 10, 13), tz=TZ))
    assert (wk["mobile"].actual, wk["mobile"].target, wk["mobile"].status) == (
        5,
        6,
        Status.ON_TRACK,
    )  # 5 ≥ 6 × 3/7
    assert (wk["telecom"].actual, wk["telecom"].status) == (0, Status.BEHIND)
    delivered = monthly.model_copy(update={"measure": "messages_delivered"})
    dl = by_key(
        attainment(engine, delivered, windows(delivered)[0], small, now=local(2022, 11, 1), tz=TZ)
    )
    assert (dl["mobile"].actual, dl["unicom"].actual) == (5, 2)


def test_cumulative_distinct_people_with_milestones(engine: Engine, small: District) -> None:
    h = History(engine)
    for rid in range(1, 10):  # nine people in March, one of them twice
        h.send(local(2022, 3, 20, 10, rid), "b", "v1", recipient=rid)
    h.send(local(2022, 3, 28, 10), "b", "v1", recipient=1)
    h.send(local(2022, 3, 14, 23, 59), "b", "v1", recipient=99)  # before the plan started
    for rid in range(10, 15):
        h.send(local(2022, 4, 10, 10), "b", "v1", recipient=rid)
    h.send(local(2022, 4, 10, 10), "b", "v1", recipient=3)
    for rid in range(20, 30):  # all of 乙二村's 45% (9 of 20) in March
        h.send(local(2022, 3, 31, 23, 59), "b", "v2", recipient=rid)
    r = cumulative(towns=["b"])
    (w,) = windows(r)
    rows = by_key(attainment(engine, r, w, small, now=local(2022, 4, 16), tz=TZ))
    v1 = rows["b/v1"]
    assert (v1.actual, v1.target, v1.expected, v1.status) == (14, 45, 17, Status.BEHIND)
    assert [(m.actual, m.met) for m in v1.milestones] == [
        (9, True),
        (None, None),
        (None, None),
        (None, None),
    ]
    v2 = rows["b/v2"]
    assert (v2.actual, v2.target, v2.status, v2.rank) == (10, 9, Status.MET, 1)
    assert v2.milestones[0].actual == 10
    # Counted by town: distinct people of the whole town.
    town = by_key(attainment(engine, r.as_subject("town"), w, small, now=local(2022, 7, 1), tz=TZ))
    assert town["b"].actual == 24
    assert town["b"].target == 54  # 45% of 120


def test_people_reached_by_residence(engine: Engine, small: District) -> None:
    h = History(engine)
    for rid in range(1, 4):
        h.recipient(rid, "a", "v1", "registered")
    h.recipient(4, "a", "v1", "migrant")
    h.recipient(5, "a", "v1", None)
    for rid in range(1, 6):
        h.send(local(2022, 4, 1, 10), "a", "v1", recipient=rid)
        h.send(local(2022, 4, 8, 10), "a", "v1", recipient=rid)
    r = cumulative(by_residence=True, towns=["a"])
    (w,) = windows(r)
    rows = by_key(attainment(engine, r, w, small, now=local(2022, 7, 1), tz=TZ))
    reg, mig = rows["a/v1/registered"], rows["a/v1/migrant"]
    assert (reg.base, reg.target, reg.actual, reg.status) == (6, 3, 3, Status.MET)
    assert (mig.base, mig.target, mig.actual, mig.status) == (4, 2, 1, Status.BEHIND)
    assert mig.laggard


def test_rebuild_counters_matches_the_bumped_ones(engine: Engine) -> None:
    h = History(engine)
    h.send(local(2022, 10, 31, 0, 10), "a", delivered=True)
    h.send(local(2022, 10, 31, 9), "a")
    h.send(local(2022, 11, 1, 9), "b", "v2", "unicom", delivered=True)

    def snapshot() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    select(SendCounter).order_by(SendCounter.day, SendCounter.town_id)
                )
            ]

    before = snapshot()
    with transaction(engine) as s:
        assert rebuild_counters(s, TZ) == 2
    assert snapshot() == before
    assert [r[0] for r in before] == [dt.date(2022, 10, 31), dt.date(2022, 11, 1)]


def test_rebuild_counters_keeps_the_days_of_pruned_months(engine: Engine) -> None:
    """Counters are the only record of a pruned month: a rebuild leaves days before the
    earliest send still in `messages` alone."""
    h = History(engine)
    h.send(local(2022, 9, 20, 9), "a", delivered=True)
    h.send(local(2022, 10, 10, 9), "a", delivered=True)
    with transaction(engine) as s:
        s.execute(delete(Message).where(Message.sent_at < local(2022, 10, 1, 0)))
    with transaction(engine) as s:
        assert rebuild_counters(s, TZ) == 1
    with engine.connect() as conn:
        days = [r[0] for r in conn.execute(select(SendCounter.day).order_by(SendCounter.day))]
    assert days == [dt.date(2022, 9, 20), dt.date(2022, 10, 10)]


def test_select_windows_and_overlap(repo_district: District) -> None:
    rules = load_rules(ROOT / "config", repo_district)
    on = {(r.id, w.label) for r, w in select_windows(rules, day=dt.date(2022, 11, 3))}
    assert on == {
        ("town-weekly-oct", "2022-W44"),  # October's last week runs into November
        ("town-monthly-novdec", "2022-11"),
        ("carrier-monthly", "2022-11"),
        ("carrier-weekly", "2022-W44"),
    }
    by_label = select_windows(rules, label="2022-10")
    assert [r.id for r, _ in by_label] == ["carrier-monthly"]
    weekly = find_rule(rules, "town-weekly-oct")
    nov = windows_overlapping(weekly, dt.date(2022, 11, 1), dt.date(2022, 11, 30))
    assert [w.label for w in nov] == ["2022-W44"]


def test_rules_file_edits_count_at_once_despite_the_parse_cache(
    tmp_path: Path, repo_district: District
) -> None:
    """load_rules keeps parsed rules while the file's bytes are unchanged: an edit (even one
    of the same length, within the same clock tick) is read on the next call."""
    src = (ROOT / "config" / "quotas.yaml").read_text("utf-8")
    path = tmp_path / "quotas.yaml"
    path.write_text(src, encoding="utf-8")
    first = load_rules(tmp_path, repo_district)
    again = load_rules(tmp_path, repo_district)
    assert [r.id for r in again] == [r.id for r in first]
    weekly = next(r for r in first if r.id == "town-weekly-oct")
    assert weekly.share == Decimal("0.5")
    path.write_text(src.replace("share: 50%", "share: 60%", 1), encoding="utf-8")
    edited = next(r for r in load_rules(tmp_path, repo_district) if r.id == "town-weekly-oct")
    assert edited.share == Decimal("0.6")
    path.write_text(src.replace("share: 50%", "share: 150%", 1), encoding="utf-8")
    with pytest.raises(ConfigError):
        load_rules(tmp_path, repo_district)
    path.unlink()
    assert load_rules(tmp_path, repo_district) == []
