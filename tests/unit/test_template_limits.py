"""Templates run with bounded resources: each limit stops the work at once and says which.

Without the limits each of these templates takes gigabytes or never ends; the time bounds in
the assertions are generous (the limits stop them in milliseconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler.config import District, load_district
from scheduler.exceptions import TemplateError
from scheduler.sandbox import Limits, TemplateLimitError
from scheduler.templating import LETTER_LIMITS, Catalogue

ROOT = Path(__file__).resolve().parents[2]
GENEROUS = 10.0  # seconds; each case below stops in well under one


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


def _render(cat: Catalogue, name: str) -> None:
    town = cat.district.towns[0]
    cat.render(name, cat.context(town=town, village=town.villages[0]))


LIMITED = {
    "repeat": ("{{ 'a' * 10**9 }}", "repetition would build 1000000000"),
    "repeat-list": ("{{ ([1] * 10**9)|length }}", "repetition"),
    "power": ("{{ 10 ** 100000 }}", "power too large"),
    "range": ("{% for i in range(10**9) %}{% endfor %}", "range limit"),
    "nested-loops": (
        "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "loop limit",
    ),
    "string-loops": (
        "{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "loop limit",
    ),
    "doubling": (
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        "size limit",
    ),
    "list-doubling": (
        "{% set l = [1] %}{% for i in range(60) %}{{ l.extend(l) }}{% endfor %}",
        "size limit",
    ),
    "macro-doubling": (
        "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('a') }}",
        "size limit",
    ),
    "recursion": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion too deep"),
    "center": ("{{ 'a'|center(10**9) }}", "center(1000000000)"),
    "ljust": ("{{ 'a'.ljust(10**9) }}", "ljust(1000000000)"),
    "printf": ("{{ '%1000000000s' % 'a' }}", "format width"),
    "printf-star": ("{{ '%*s' % (10**9, 'a') }}", "format width"),
    "str-format": ("{{ '{:>1000000000}'.format('a') }}", "format width"),
    "format-filter": ("{{ '%1000000000s'|format('a') }}", "format width"),
    "output": ("{% for i in range(1000) %}{{ town }}{% endfor %}", "output limit"),
}


@pytest.mark.parametrize("name", sorted(LIMITED))
def test_each_limit_stops_the_render_quickly_and_names_itself(
    catalogue: Catalogue, name: str
) -> None:
    body, reason = LIMITED[name]
    _write(catalogue, name, body)
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as caught:
        _render(catalogue, name)
    assert time.monotonic() - started < GENEROUS
    message = str(caught.value)
    assert reason in message
    assert message.startswith(f"{catalogue.dir / f'{name}.sms.j2'}:5: {name}: ")


def test_the_time_limit_stops_a_slow_render(catalogue: Catalogue, district: District) -> None:
    # Within the loop limit (1,000 iterations) but each sorts a thousand items many times.
    cat = Catalogue(
        catalogue.dir, district, limits={"sms": Limits(seconds=0.2), "letter": LETTER_LIMITS}
    )
    _write(
        cat,
        "slow",
        "{% set l = range(1000)|list %}{% for i in range(1000) %}{% for j in range(10) %}"
        "{% set x = l|sort|reverse|list %}{% endfor %}{% endfor %}",
    )
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match="time limit"):
        _render(cat, "slow")
    assert time.monotonic() - started < GENEROUS


def test_the_output_limit_gives_the_line_writing_when_it_ran_over(catalogue: Catalogue) -> None:
    _write(catalogue, "long", "第一行\n{% for i in range(999) %}\n{{ town }}\n{% endfor %}")
    with pytest.raises(TemplateLimitError, match=r"long\.sms\.j2:6: long: output longer"):
        _render(catalogue, "long")


def test_ordinary_templates_are_untouched_by_the_limits(catalogue: Catalogue) -> None:
    _write(
        catalogue,
        "fine",
        "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }}{% endfor %}"
        "{% set ns = namespace(n=0) %}{% for k, v in {'a': 1}.items() %}{% set ns.n = v %}"
        "{% endfor %}{{ ns.n }}{{ '%s镇' % town }}{{ '{}'.format(village) }}{{ 'x'|center(5) }}",
    )
    town = catalogue.district.towns[0]
    text = catalogue.render("fine", catalogue.context(town=town, village=town.villages[0])).text
    assert f"1/32/33/31{town.name}镇{town.villages[0].name}  x回T退订" in text
    assert catalogue.lint(pools_used=["weekly-slogans"]) == []


def test_any_error_while_rendering_is_a_template_error_with_its_line(
    catalogue: Catalogue,
) -> None:
    _write(catalogue, "zero", "第一行\n{{ 1 // 0 }}")
    with pytest.raises(TemplateError, match=r"zero\.sms\.j2:6: zero: ZeroDivisionError"):
        _render(catalogue, "zero")


def test_lint_reports_a_template_that_breaks_a_limit_with_file_and_line(
    catalogue: Catalogue,
) -> None:
    path = _write(catalogue, "greedy", "提醒\n{{ 'a' * 10**9 }}")
    problems = catalogue.lint(["greedy"])
    assert [(p.path, p.line) for p in problems] == [(path, 6)]
    assert "size limit" in problems[0].reason
    with pytest.raises(TemplateError, match="fails lint"):
        catalogue.approve("greedy", "王科长")


BOMB = """channel: sms
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize(
    ("front", "line", "reason"),
    [
        (BOMB, 3, "anchors (&name) are not allowed"),
        ("channel: sms\ntheme: *x\n", 3, "aliases (*name) are not allowed"),
        ("channel: !!python/name:os.system sms\n", 2, "tags (tag:yaml.org,2002:python/name"),
        ("channel: sms\ntheme: !!binary aGk=\n", 3, "tags (tag:yaml.org,2002:binary)"),
        ("channel: sms\ndescription: '" + "长" * 5000 + "'\n", 1, "size limit"),
    ],
)
def test_front_matter_allows_only_plain_values(
    catalogue: Catalogue, front: str, line: int, reason: str
) -> None:
    path = _write(catalogue, "odd", "{{ town }}防诈提醒", front=front)
    started = time.monotonic()
    problems = [p for p in catalogue.lint(["odd"]) if "front matter" in p.reason]
    assert time.monotonic() - started < GENEROUS
    assert [(p.path, p.line) for p in problems] == [(path, line)]
    assert reason in problems[0].reason


def test_an_alias_bomb_in_front_matter_does_not_stall_templates_list(tmp_path: Path) -> None:
    folder = tmp_path / "messages"
    shutil.copytree(ROOT / "templates" / "messages", folder)
    (folder / "bomb.sms.j2").write_text(f"---\n{BOMB}---\n{{{{ town }}}}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_TEMPLATES_DIR=str(folder), PINGAN_DATA_DIR=str(tmp_path / "var"))
    started = time.monotonic()
    listed = subprocess.run(
        [sys.executable, "-m", "scheduler", "templates", "list", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert listed.returncode == 0, listed.stderr
    assert "bomb" in listed.stdout
    lint = subprocess.run(
        [sys.executable, "-m", "scheduler", "templates", "lint", "bomb"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lint.returncode == 1
    assert f"{folder / 'bomb.sms.j2'}:3: bomb: front matter:" in lint.stdout
    assert "anchors (&name) are not allowed" in lint.stdout


def test_approvals_file_with_an_alias_is_refused(catalogue: Catalogue) -> None:
    catalogue.approvals_path.write_text("a: &x {hash: abc}\nb: *x\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="anchors"):
        catalogue.approval_state("survey-notice")


def test_lint_tries_every_village_not_only_the_sample(catalogue: Catalogue) -> None:
    path = _write(
        catalogue,
        "one-village",
        "{{ village }}提醒\n{% if village == '派出所' %}{{ 'a' * 10**9 }}{% endif %}",
    )
    problems = catalogue.lint(["one-village"])
    assert [(p.path, p.line) for p in problems] == [(path, 6)]
    assert problems[0].reason.endswith("(size limit) (for 黄湖镇 派出所)")


def test_lint_names_the_place_and_fraud_type_that_make_an_alert_too_long(
    catalogue: Catalogue,
) -> None:
    # Short enough for the sample; the longest fraud type makes it a third segment.
    _write(
        catalogue,
        "alert",
        "{{ case_date }}{{ village }}发生{{ fraud_type }}案件，损失{{ amount_band }}。"
        + "请广大居民提高警惕，不轻信、不透露、不转账，如遇可疑情况请立即拨打110或96110咨询。"
        + "守好钱袋子，" * 8
        + "平安",
    )
    (problem,) = catalogue.lint(["alert"])
    assert "segments (at most 2) (for " in problem.reason
    assert "网络游戏产品虚假交易" in problem.reason
