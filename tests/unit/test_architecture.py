"""The layering, by test: front ends → services → domain → store.

Imports are read with `ast` from the source files, function-level imports included, so an
import hidden inside a handler counts as much as one at the top of the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scheduler"
FRONT_ENDS = ("cli", "web", "console")


def imported_modules(source: str, module: str) -> set[str]:
    """Every module `source` (the text of `module`) imports, anywhere in it, as dotted names;
    `from a import b` yields both `a` and `a.b` (b may be a submodule)."""
    found: set[str] = set()
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    """Dotted, keeping `__init__`: relative imports in a package's __init__ resolve right."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports_of(folder: str) -> dict[str, set[str]]:
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, f"no modules under scheduler/{folder}"
    return {
        _module_name(f): imported_modules(f.read_text(encoding="utf-8"), _module_name(f))
        for f in files
    }


def _reaching(imports: dict[str, set[str]], target: str) -> dict[str, list[str]]:
    return {
        module: sorted(n for n in names if n == target or n.startswith(target + "."))
        for module, names in imports.items()
        if any(n == target or n.startswith(target + ".") for n in names)
    }


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_front_ends_do_not_import_the_store(front_end: str) -> None:
    """The CLI, the HTTP layer and the console call scheduler.services, never the store."""
    assert _reaching(_imports_of(front_end), "scheduler.store") == {}


def test_the_store_stays_below_the_core_and_the_services() -> None:
    imports = _imports_of("store")
    for above in ("scheduler.core", "scheduler.services", *(f"scheduler.{f}" for f in FRONT_ENDS)):
        assert _reaching(imports, above) == {}, above


def test_services_do_not_import_front_ends() -> None:
    imports = _imports_of("services")
    for front_end in FRONT_ENDS:
        assert _reaching(imports, f"scheduler.{front_end}") == {}, front_end


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from scheduler.store import outbox", "scheduler.cli.x"),
        ("import scheduler.store.delivery as d", "scheduler.cli.x"),
        ("from scheduler import store", "scheduler.web.x"),
        ("def handler():\n    from scheduler.store.audit import record\n", "scheduler.web.x"),
        ("from ..store import audit", "scheduler.web.x"),
        ("from .. import store", "scheduler.console.x"),
    ],
)
def test_the_check_sees_every_form_of_import(source: str, module: str) -> None:
    """What the rule would miss if the parsing were naive: function-level, aliased and
    relative imports, and the package imported as a name."""
    assert _reaching({module: imported_modules(source, module)}, "scheduler.store")


def test_the_check_does_not_confuse_a_prefix() -> None:
    names = imported_modules("from scheduler.storefront import x\nimport scheduler.stores", "a.b")
    assert _reaching({"a.b": names}, "scheduler.store") == {}
