"""Rules of the test suite itself, read from its source (nothing is imported or run).

* A test module (``tests/**/test_*.py``) imports no other test module and no conftest: what
  tests share lives in ``tests/support/``.
* Fixtures shared between modules live in ``tests/support/`` modules that ``tests/conftest.py``
  registers with ``pytest_plugins``; a conftest defines none itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

# Files another branch is reworking, which break a rule until they are merged: path -> why.
# An entry that no longer breaks the rule fails the test below, so that it is removed.
PENDING: dict[str, str] = {
    "tests/integration/test_revoke.py": (
        "imports KafkaCluster from tests.conftest; its tests are being moved to unit tests on "
        "another branch, which switches it to tests.support.kafka when merged"
    ),
}


def all_test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imported(tree: ast.Module, module: str) -> Iterator[tuple[int, str]]:
    """Every module an import statement of ``tree`` may name, with its line: ``from a import b``
    names ``a`` and ``a.b`` (``b`` may be a module)."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _is_test_module_or_conftest(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and (parts[-1] == "conftest" or parts[-1].startswith("test_"))


def forbidden_imports(source: str, module: str) -> list[str]:
    """``line: name`` of each import of a test module or a conftest in ``source``."""
    tree = ast.parse(source)
    return sorted(
        {
            f"{line}: {name}"
            for line, name in _imported(tree, module)
            if _is_test_module_or_conftest(name)
        }
    )


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from tests.conftest import KafkaCluster", ["1: tests.conftest"]),
        ("import tests.integration.test_client", ["1: tests.integration.test_client"]),
        ("from tests.integration import test_client", ["1: tests.integration.test_client"]),
        (
            "from tests.integration.test_health import wait_for_report",
            ["1: tests.integration.test_health"],
        ),
        ("from .test_client import USER", ["1: tests.integration.test_client"]),
        ("from . import conftest", ["1: tests.integration.conftest"]),
        ("def f():\n    from tests.unit.test_cli import x", ["2: tests.unit.test_cli"]),
        ("from tests.support.kafka import KafkaCluster", []),
        ("from tests.chaos.harness import run", []),
        ("from stream.pipeline import test_mode", []),
        ("import pytest", []),
    ],
)
def test_the_import_rule_finds_what_it_should(source: str, found: list[str]) -> None:
    assert forbidden_imports(source, "tests.integration.test_example") == found


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    broken: dict[str, list[str]] = {}
    for path in all_test_modules():
        found = forbidden_imports(path.read_text(encoding="utf-8"), _module_name(path))
        if found:
            broken[path.relative_to(ROOT).as_posix()] = found
    assert {p: f for p, f in broken.items() if p not in PENDING} == {}, (
        "move what is shared into tests/support/"
    )
    assert set(PENDING) <= set(broken), (
        f"no longer breaking the rule, remove from PENDING: {sorted(set(PENDING) - set(broken))}"
    )


def _fixtures(tree: ast.Module) -> list[str]:
    def is_fixture(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return ast.unparse(target) in ("pytest.fixture", "fixture")

    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(is_fixture(d) for d in node.decorator_list)
    ]


def _registered_plugins(conftest: Path) -> list[str]:
    for node in ast.parse(conftest.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(v) for v in value]
    return []


def test_shared_fixtures_are_support_modules_registered_in_the_conftest() -> None:
    for conftest in sorted(TESTS.rglob("conftest.py")):
        assert _fixtures(ast.parse(conftest.read_text(encoding="utf-8"))) == [], conftest
    registered = _registered_plugins(TESTS / "conftest.py")
    with_fixtures = [
        _module_name(path)
        for path in sorted((TESTS / "support").rglob("*.py"))
        if _fixtures(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert sorted(registered) == sorted(with_fixtures)
