"""Recipient import on both backends: encodings, headers, rejects, upserts, opt-outs."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scheduler.config import District
from scheduler.core import Core
from scheduler.exceptions import InputFileError
from scheduler.models import Recipient
from scheduler.recipients import detect_encoding, import_recipients_file
from scheduler.sample_data import generate, write_csv
from scheduler.store.recipients import is_opted_out, record_opt_outs, stats, upsert_recipients

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "recipients" / "broken-sample.csv"
HEADER = "phone,town,village,name,household,carrier,residence,segments"

NOW = dt.datetime(2022, 10, 10, 1, 0, tzinfo=dt.UTC)


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("\r\n".join(lines).encode(encoding) + b"\r\n")
    return path


def _recipients(engine: Engine) -> dict[str, Recipient]:
    with Session(engine) as session:
        return {r.phone: r for r in session.scalars(select(Recipient))}


def _rejects(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8), "Excel needs the BOM to read UTF-8"
    return list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))


def test_mixed_gbk_file_imports_exactly_the_good_rows_once(core: Core, tmp_path: Path) -> None:
    """The issue's Done-when: good rows, bad numbers, unknown places, GBK, duplicates."""
    src = shutil.copy(BROKEN, tmp_path / "broken.csv")
    summary = import_recipients_file(core.engine, core.district, Path(src))

    assert summary.encoding == "gb18030"
    assert (summary.rows, summary.imported, summary.updated, summary.rejected) == (20, 8, 2, 10)
    assert sum(summary.by_town.values()) == sum(summary.by_carrier.values()) == 10

    rows = _recipients(core.engine)
    assert sorted(rows) == [
        "13300000003",
        "13600000013",
        "13800138000",
        "15700000004",
        "16200000012",
        "17400100011",
        "18600000001",
        "18900000002",
    ]
    # Duplicates: the later row wins.
    zhang = rows["13800138000"]
    assert (zhang.town_id, zhang.village_id, zhang.household) == (
        "huanghu",
        "hushan",
        "hushan-00001",
    )
    assert zhang.segments == ";elderly;student;"
    assert zhang.residence == "registered"
    li = rows["18600000001"]
    assert (li.carrier, li.residence, li.segments) == ("unicom", "migrant", ";worker;")
    # Chinese names of towns and villages resolve to ids; carriers from the column or number.
    wang = rows["18900000002"]
    assert (wang.town_id, wang.village_id, wang.carrier) == ("baiguan", "longshan", "telecom")
    assert wang.segments == ""
    assert rows["13300000003"].segments == ";finance_staff;single_woman_20_40;"
    assert rows["16200000012"].carrier == "telecom"  # virtual operator on Telecom
    assert rows["17400100011"].carrier == "telecom"
    assert rows["13600000013"].village_id == "paichusuo"
    assert rows["13600000013"].name == "沈涛"
    assert zhang.created_at.tzinfo is not None

    # The rejects file explains every other row, with its line and the original fields.
    assert summary.rejects_file == str(tmp_path / "broken.rejects.csv")
    rejects = _rejects(Path(summary.rejects_file))
    assert [int(r["line"]) for r in rejects] == [7, 8, 9, 10, 11, 12, 13, 14, 17, 21]
    reasons = {int(r["line"]): r["reason"] for r in rejects}
    assert "11-digit" in reasons[7]
    assert "satellite" in reasons[8] and "satellite" in reasons[17]
    assert "not allocated" in reasons[9]
    assert "星湖镇" in reasons[11]
    assert "不存在村" in reasons[12]
    assert "gambler" in reasons[13]
    assert "中国铁通" in reasons[14]
    assert "外地" in reasons[21]
    assert rejects[0]["手机号"] == "1380013800" and rejects[0]["姓名"] == "赵强"
    assert all(r["reason"] for r in rejects)
    assert summary.rows == summary.imported + summary.updated + summary.rejected


def test_reimport_updates_without_duplicating(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    write_csv(core.district, path, 300, seed=7)
    first = import_recipients_file(core.engine, core.district, path)
    assert (first.imported, first.updated, first.rejected) == (300, 0, 0)
    assert first.rejects_file is None
    assert not (tmp_path / "list.rejects.csv").exists()
    created = {p: r.created_at for p, r in _recipients(core.engine).items()}

    second = import_recipients_file(core.engine, core.district, path, chunk_rows=64)
    assert (second.imported, second.updated, second.rejected) == (0, 300, 0)
    with core.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Recipient)).scalar_one() == 300
    after = _recipients(core.engine)
    assert {p: r.created_at for p, r in after.items()} == created
    assert all(r.updated_at >= r.created_at for r in after.values())


def test_changed_row_is_updated_in_place(core: Core, tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", [HEADER, "13800138000,huanghu,qingbo,甲,,,,elderly"])
    import_recipients_file(core.engine, core.district, path)
    path = _write(tmp_path / "a.csv", [HEADER, "13800138000,caoe,jiangxi,乙,h1,联通,流动,"])
    summary = import_recipients_file(core.engine, core.district, path)
    assert (summary.imported, summary.updated) == (0, 1)
    r = _recipients(core.engine)["13800138000"]
    assert (r.town_id, r.village_id, r.name, r.household) == ("caoe", "jiangxi", "乙", "h1")
    assert (r.carrier, r.residence, r.segments) == ("unicom", "migrant", "")


def test_duplicates_across_chunks_count_as_updates(core: Core, tmp_path: Path) -> None:
    lines = [HEADER] + [f"1380013{i:04d},huanghu,qingbo,,,,," for i in range(10)] * 3
    path = _write(tmp_path / "dupes.csv", lines)
    summary = import_recipients_file(core.engine, core.district, path, chunk_rows=4)
    assert (summary.rows, summary.imported, summary.updated) == (30, 10, 20)
    assert len(_recipients(core.engine)) == 10


def test_opt_outs_survive_reimport(core: Core, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "l.csv",
        [HEADER, "13800138000,huanghu,qingbo,,,,,", "18600000001,huanghu,qingbo,,,,,"],
    )
    import_recipients_file(core.engine, core.district, path)
    assert (
        record_opt_outs(
            core.engine, ["13800138000"], source="cli", reason="电话投诉", now=core.clock()
        )
        == 1
    )
    assert (
        record_opt_outs(core.engine, ["13800138000", "18900000002"], source="api", now=core.clock())
        == 1
    )
    import_recipients_file(core.engine, core.district, path)
    assert is_opted_out(core.engine, "13800138000")
    assert is_opted_out(core.engine, "18900000002")  # recorded before any list names it
    assert not is_opted_out(core.engine, "18600000001")
    s = stats(core.engine)
    assert (s["total"], s["opted_out"], s["opted_out_in_lists"]) == (2, 2, 1)


def test_opt_out_keeps_its_first_record_and_long_text_fits(engine: Engine) -> None:
    long_reason = "退订" * 300
    assert (
        record_opt_outs(engine, ["13800138000"], source="x" * 100, reason=long_reason, now=NOW) == 1
    )
    assert record_opt_outs(engine, ["13800138000"], source="reply", reason="T", now=NOW) == 0
    assert record_opt_outs(engine, [], source="cli", now=NOW) == 0
    assert is_opted_out(engine, "13800138000")


def test_utf8_with_bom_and_chinese_headers(core: Core, tmp_path: Path) -> None:
    lines = [
        "手机号,镇街,村,姓名,户号,运营商,户籍,标签",
        "13800138000,黄湖镇,王位山,张三,,移动,户籍,student；job_seeker",
        "13300000001,曹娥街道,江西社区,李四,,,流动,",
    ]
    path = _write(tmp_path / "bom.csv", lines, "utf-8-sig")
    summary = import_recipients_file(core.engine, core.district, path)
    assert summary.encoding == "utf-8-sig"
    assert (summary.imported, summary.rejected) == (2, 0)
    rows = _recipients(core.engine)
    assert rows["13800138000"].segments == ";student;job_seeker;"
    assert rows["13800138000"].residence == "registered"
    assert (rows["13300000001"].town_id, rows["13300000001"].carrier) == ("caoe", "telecom")


@pytest.mark.parametrize("encoding", ["utf-8", "gbk", "gb18030"])
def test_encoding_detected_after_a_long_ascii_start(
    core: Core, tmp_path: Path, encoding: str
) -> None:
    """The first Chinese character may come after many ASCII rows (ids, not names)."""
    lines = [HEADER] + [f"1380000{i:04d},huanghu,qingbo,,,,," for i in range(5000)]
    lines.append("13900000000,黄湖镇,清波,王五,,,,")
    path = _write(tmp_path / "late.csv", lines, encoding)
    with path.open("rb") as fh:
        assert detect_encoding(fh) == ("utf-8" if encoding == "utf-8" else "gb18030")
    summary = import_recipients_file(core.engine, core.district, path)
    assert (summary.imported, summary.rejected) == (5001, 0)
    assert _recipients(core.engine)["13900000000"].name == "王五"


def test_given_encoding_is_used(core: Core, tmp_path: Path) -> None:
    path = _write(tmp_path / "g.csv", [HEADER, "13800138000,黄湖镇,清波,王五,,,,"], "gbk")
    summary = import_recipients_file(core.engine, core.district, path, encoding="GBK")
    assert summary.encoding == "gbk"
    assert _recipients(core.engine)["13800138000"].name == "王五"


def test_unreadable_files_stop_with_file_line_and_reason(core: Core, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"missing\.csv: cannot open"):
        import_recipients_file(core.engine, core.district, tmp_path / "missing.csv")
    bad_header = _write(tmp_path / "h.csv", ["mobile_no,town", "13800138000,huanghu"])
    with pytest.raises(InputFileError, match=r"h\.csv, line 1: missing column\(s\) phone, village"):
        import_recipients_file(core.engine, core.district, bad_header)
    gbk = _write(tmp_path / "g.csv", ["手机号,乡镇,村社", "13800138000,黄湖镇,清波"], "gbk")
    with pytest.raises(
        InputFileError, match=r"g\.csv, line 1: cannot decode as utf-8 \(the header"
    ):
        import_recipients_file(core.engine, core.district, gbk, encoding="utf-8")
    with pytest.raises(InputFileError, match="unknown encoding"):
        import_recipients_file(core.engine, core.district, gbk, encoding="klingon")
    assert _recipients(core.engine) == {}, "nothing imported from a file that cannot be read"
    empty = _write(tmp_path / "e.csv", [""])
    with pytest.raises(InputFileError, match="empty"):
        import_recipients_file(core.engine, core.district, empty)


def test_ragged_and_oversized_rows_are_rejected_not_fatal(core: Core, tmp_path: Path) -> None:
    lines = [
        HEADER,
        "13800138000,huanghu",  # short row: no village
        f"13800138001,huanghu,qingbo,{'名' * 65},,,,",
        "13800138002,huanghu,qingbo,ok,,,,,extra,cells",
        "",
        "13800138003,huanghu,qingbo,,,,,everyone",
    ]
    path = _write(tmp_path / "r.csv", lines)
    summary = import_recipients_file(core.engine, core.district, path)
    assert (summary.rows, summary.imported, summary.rejected) == (4, 1, 3)
    reasons = {int(r["line"]): r["reason"] for r in _rejects(tmp_path / "r.rejects.csv")}
    assert set(reasons) == {2, 3, 6}
    assert "unknown village ''" in reasons[2]
    assert "longer than 64" in reasons[3]
    assert "everyone" in reasons[6]


def test_stale_rejects_file_is_removed_when_all_rows_are_good(core: Core, tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", [HEADER, "1,huanghu,qingbo,,,,,"])
    assert import_recipients_file(core.engine, core.district, path).rejected == 1
    assert (tmp_path / "s.rejects.csv").exists()
    _write(path, [HEADER, "13800138000,huanghu,qingbo,,,,,"])
    assert import_recipients_file(core.engine, core.district, path).rejects_file is None
    assert not (tmp_path / "s.rejects.csv").exists()


def test_progress_reports_every_byte(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_csv(core.district, path, 2000, seed=3)
    seen: list[int] = []
    import_recipients_file(core.engine, core.district, path, on_progress=seen.append)
    assert sum(seen) == path.stat().st_size


def test_stats_counts_by_town_village_carrier_and_segment(core: Core, tmp_path: Path) -> None:
    lines = [
        HEADER,
        "13800138000,huanghu,qingbo,,,,,student;elderly",
        "18600000001,huanghu,qingbo,,,,,elderly",
        "18900000002,caoe,jiangxi,,,,,",
    ]
    import_recipients_file(core.engine, core.district, _write(tmp_path / "s.csv", lines))
    s = stats(core.engine)
    assert s["total"] == 3
    assert s["by_town"] == {"caoe": 1, "huanghu": 2}
    assert s["by_village"] == {"caoe/jiangxi": 1, "huanghu/qingbo": 2}
    assert s["by_carrier"] == {"mobile": 1, "telecom": 1, "unicom": 1}
    assert s["by_segment"] == {"elderly": 2, "student": 1}
    with core.engine.connect() as conn:
        like = select(func.count()).where(Recipient.segments.like("%;elderly;%"))
        assert conn.execute(like).scalar_one() == 2


def test_upsert_in_the_callers_transaction(engine: Engine) -> None:
    now = dt.datetime(2022, 9, 1, tzinfo=dt.UTC)
    row = {
        "phone": "13800138000",
        "name": None,
        "town_id": "huanghu",
        "village_id": "qingbo",
        "household": None,
        "carrier": "mobile",
        "residence": None,
        "segments": "",
        "created_at": now,
        "updated_at": now,
    }
    with engine.begin() as conn:
        assert upsert_recipients(conn, [row]) == (1, 0)
        assert upsert_recipients(conn, [{**row, "name": "甲"}]) == (0, 1)
    assert _recipients(engine)["13800138000"].name == "甲"
    # Stored exactly as the column type stores it (SQLite's fast path converts timestamps
    # with the type's own processor): an equality filter on the instant finds the row.
    with engine.connect() as conn:
        found = conn.execute(select(Recipient.phone).where(Recipient.created_at == now)).all()
    assert [p for (p,) in found] == ["13800138000"]


def test_generator_is_synthetic_unique_deterministic_and_covers_carrier_quotas(
    tmp_path: Path,
) -> None:
    from scheduler.config import load_district
    from scheduler.phones import carrier_of, normalize

    district: District = load_district(ROOT / "config")
    rows = list(generate(district, 5000, seed=11))
    assert rows == list(generate(district, 5000, seed=11))
    assert rows != list(generate(district, 5000, seed=12))
    assert len({r[0] for r in rows}) == 5000
    assert all(normalize(r[0]) == r[0] for r in rows)
    households: dict[str, int] = {}
    for r in rows:
        households[r[4]] = households.get(r[4], 0) + 1
    assert max(households.values()) <= 4

    # The shipped sample: ~97% of each village, and each carrier at least its subscribers.
    with (ROOT / "recipients" / "sample.csv").open(encoding="utf-8", newline="") as fh:
        sample = list(csv.DictReader(fh))
    by_village: dict[str, int] = {}
    by_carrier: dict[str, int] = {}
    for rec in sample:
        by_village[rec["village"]] = by_village.get(rec["village"], 0) + 1
        c = rec["carrier"] or carrier_of(rec["phone"])
        by_carrier[c] = by_carrier.get(c, 0) + 1
    for _town, village in district.villages():
        assert abs(by_village[village.id] - 0.97 * village.population) <= 2
    for carrier in district.carriers:
        assert by_carrier[carrier.id] >= carrier.subscribers
