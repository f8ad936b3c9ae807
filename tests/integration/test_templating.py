"""The template engine and catalogue: rendering, lint, sandbox, hot edits, approval."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import pytest

from scheduler.config import District, load_district
from scheduler.exceptions import TemplateError, TemplateNotApproved
from scheduler.templating import Catalogue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def district() -> District:
    return load_district(ROOT / "config")


@pytest.fixture
def catalogue(tmp_path: Path, district: District) -> Catalogue:
    folder = tmp_path / "messages"
    shutil.copytree(ROOT / "templates" / "messages", folder)
    return Catalogue(folder, district)


def _write(cat: Catalogue, name: str, body: str, front: str = "channel: sms\ntheme: t\n") -> Path:
    path = cat.dir / f"{name}.sms.j2"
    path.write_text(f"---\n{front}---\n{body}\n", encoding="utf-8")
    return path


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_shipped_catalogue_passes_lint_and_is_approved(catalogue: Catalogue) -> None:
    assert catalogue.lint(pools_used=["weekly-slogans"]) == []
    names = catalogue.names()
    assert len(catalogue.pool("weekly-slogans")) >= 12
    for name in (
        "survey-notice",
        "participation-ways",
        "participation-meaning",
        "local-case-alert",
    ):
        assert name in names
    for name in names:
        assert catalogue.approval_state(name) == "approved", name


def test_general_sms_carry_district_signature_and_opt_out(
    catalogue: Catalogue, district: District
) -> None:
    town = district.find_town("huanghu")
    for name in ("survey-notice", "participation-ways", "participation-meaning"):
        r = catalogue.render(name, catalogue.context(town=town, village=town.villages[0]))
        assert r.text.startswith("【平安上虞】")
        assert r.text.endswith("回T退订")
        assert "上虞" in r.text[6:]
        assert 1 <= r.segments <= 2
        assert len(r.template_hash) == 64
    survey = catalogue.render("survey-notice", catalogue.context(town=town))
    assert "0571-12340" in survey.text and "11月1日" in survey.text


def test_rotation_gives_a_different_slogan_each_week(catalogue: Catalogue) -> None:
    picks = [catalogue.pick_from_pool("weekly-slogans", i).name for i in range(30)]
    assert all(a != b for a, b in itertools.pairwise(picks))


def test_only_per_recipient_templates_are_marked_so(catalogue: Catalogue) -> None:
    assert not catalogue.get("survey-notice").per_recipient
    _write(catalogue, "personal", "{{ name }}您好，{{ district_short }}提醒您防范诈骗。")
    assert catalogue.get("personal").per_recipient
    assert "village" in catalogue.get("local-case-alert").variables


@pytest.mark.parametrize(
    ("body", "front", "reason"),
    [
        ("{{ district_short }提醒", "channel: sms\n", "syntax error"),
        ("{{ no_such_variable }}", "channel: sms\n", "not defined"),
        ("提醒{{ district_short }}", "channel: sms\nwrap: false\n", "signature"),
        ("{{ signature }}提醒{{ district_short }}", "channel: sms\nwrap: false\n", "opt-out"),
        ("防" * 140, "channel: sms\n", "segments"),
        ("提醒", "channel: sms\naudience: [astronauts]\n", "unknown audience"),
        ("提醒", "channel: fax\n", "unknown channel"),
        ("{{ ''.__class__.__mro__ }}", "channel: sms\n", "not allowed"),
    ],
)
def test_lint_names_file_line_and_reason(
    catalogue: Catalogue, body: str, front: str, reason: str
) -> None:
    path = _write(catalogue, "broken", body, front)
    problems = catalogue.lint(["broken"])
    assert problems, "lint found nothing"
    assert any(reason in p.reason for p in problems), [p.reason for p in problems]
    assert all(p.path == path and p.line >= 1 for p in problems)


def test_syntax_error_line_is_the_files_line(catalogue: Catalogue) -> None:
    _write(catalogue, "broken", "第一行\n第二行{{ oops")
    (problem,) = catalogue.lint(["broken"])
    assert problem.line == 6  # 3 front-matter lines + 2 separators, then the second body line


def test_empty_rotation_pool_is_reported(catalogue: Catalogue) -> None:
    problems = catalogue.lint(pools_used=["weekly-slogans", "no-such-pool"])
    assert [p.name for p in problems] == ["no-such-pool"]


def test_sandbox_refuses_to_render_python_internals(catalogue: Catalogue) -> None:
    _write(catalogue, "escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError, match="not allowed"):
        catalogue.render("escape", catalogue.context())


def test_missing_variable_is_an_error_not_a_blank(catalogue: Catalogue) -> None:
    with pytest.raises(TemplateError, match="is undefined"):
        catalogue.render("local-case-alert", catalogue.context())


def test_an_edit_changes_the_next_render_and_needs_approval_again(
    catalogue: Catalogue, district: District
) -> None:
    town = district.towns[0]
    before = catalogue.render("participation-ways", catalogue.context(town=town))
    path = catalogue.get("participation-ways").path
    path.write_text(path.read_text(encoding="utf-8").replace("平安靠大家", "平安你我他"), "utf-8")
    _touch_later(path)
    after = catalogue.render("participation-ways", catalogue.context(town=town))
    assert "平安你我他" in after.text and after.text != before.text
    assert after.template_hash != before.template_hash
    assert catalogue.approval_state("participation-ways") == "changed"
    with pytest.raises(TemplateNotApproved, match="participation-ways"):
        catalogue.require_approved("participation-ways")
    catalogue.approve("participation-ways", "测试员")
    assert catalogue.require_approved("participation-ways").source_hash == after.template_hash
    time.sleep(0)  # the approval is in the file beside the templates
    assert "测试员" in (catalogue.dir / "approvals.yaml").read_text(encoding="utf-8")


def test_a_template_that_fails_lint_cannot_be_approved(catalogue: Catalogue) -> None:
    _write(catalogue, "broken", "{{ nope }}")
    with pytest.raises(TemplateError, match="fails lint"):
        catalogue.approve("broken", "测试员")


def test_letter_is_escaped_html_for_print(catalogue: Catalogue, district: District) -> None:
    r = catalogue.render("letter-to-residents", catalogue.context(town=district.towns[0]))
    assert r.encoding == "html"
    assert "page-break-after" in r.text and "Noto Serif CJK SC" in r.text
    assert district.towns[0].name in r.text and district.district.office in r.text
