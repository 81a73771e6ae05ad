"""Rules of the test suite itself, read from its source (nothing is imported or run).

* A test module (``tests/**/test_*.py``) imports no other test module and no conftest: what
  tests share lives in ``tests/support/``.
* Fixtures shared between modules live in ``tests/support/`` modules that ``tests/conftest.py``
  registers with ``pytest_plugins``; a conftest defines none itself.
* A module's ``pytestmark`` says what it needs (``kafka``, ``sandbox``, ``process``; and
  ``integration`` in ``tests/integration``), as far as its source shows; unit tests need none.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

# Files another branch is reworking, which break a rule until they are merged: path -> why.
# An entry that no longer breaks the rule fails the test below, so that it is removed.
PENDING: dict[str, str] = {}


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


# -- markers by need ---------------------------------------------------------------------------

NEEDS = ("kafka", "sandbox", "process")
# What a module's source shows it needs: modules it imports, names it uses, parameters it takes
# (fixtures), and ``"-m", "stream..."`` in a command line.
_NEED_SIGNS: dict[str, dict[str, set[str]]] = {
    "kafka": {
        "modules": {
            "localkafka",
            "tests.chaos.harness",
            "tests.support.kafka",
            "tests.support.pipeline_harness",
        },
        "names": {"KafkaCluster"},
        "parameters": {"kafka"},
        "commands": set(),
    },
    "sandbox": {
        "modules": {
            "tests.chaos.harness",
            "tests.support.client_sandbox",
            "tests.support.pipeline_harness",
            "tests.support.scenario",
        },
        "names": {"run_sandbox", "SandboxProcess"},
        "parameters": {"sandbox"},
        "commands": {"stream.sandbox"},
    },
    "process": {
        "modules": {"tests.chaos.harness", "tests.support.scenario"},
        "names": {"DdsyncProcess", "SandboxProcess", "run_with_config"},
        "parameters": set(),
        "commands": {"stream", "stream.sandbox"},
    },
}
# Files others are editing, which get their markers when merged: path -> the markers they need.
PENDING_MARKS: dict[str, set[str]] = {}


def _marks(node: ast.AST) -> set[str]:
    return {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and ast.unparse(sub.value) == "pytest.mark"
    }


def module_marks(tree: ast.Module) -> set[str]:
    """The markers of the module-level ``pytestmark``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return _marks(node.value)
    return set()


def param_marks(tree: ast.Module) -> set[str]:
    """The markers given to single parameters (``pytest.param(..., marks=...)``): a contract
    test runs one parameter against the real broker and another in memory."""
    return {
        mark
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.param"
        for keyword in node.keywords
        if keyword.arg == "marks"
        for mark in _marks(keyword.value)
    }


def needs_seen(tree: ast.Module) -> set[str]:
    modules = {name for _, name in _imported(tree, "tests.x")}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    parameters = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    commands: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple | ast.Call):
            items = node.elts if isinstance(node, ast.List | ast.Tuple) else node.args
            values = [i.value if isinstance(i, ast.Constant) else None for i in items]
            commands |= {str(b) for a, b in itertools.pairwise(values) if a == "-m"}
    seen = {"modules": modules, "names": names, "parameters": parameters, "commands": commands}
    return {
        need
        for need, signs in _NEED_SIGNS.items()
        if any(seen[kind] & signs[kind] for kind in seen)
    }


@pytest.mark.parametrize(
    ("source", "needs"),
    [
        ("def test(kafka: KafkaCluster) -> None: ...", {"kafka"}),
        ("import localkafka", {"kafka"}),
        ("from tests.support.pipeline_harness import harness", {"kafka", "sandbox"}),
        ("from tests.support.scenario import Scenario", {"sandbox", "process"}),
        ("harness = Harness(capacity=2)", set()),
        ("async def test(sandbox): ...", {"sandbox"}),
        ("async with run_sandbox(settings) as sb: ...", {"sandbox"}),
        ("SandboxProcess(path, accounts)", {"sandbox", "process"}),
        ("run([sys.executable, '-m', 'stream', 'run'])", {"process"}),
        ("exec(sys.executable, '-m', 'stream.sandbox')", {"sandbox", "process"}),
        ("run([sys.executable, '-c', 'import stream'])", set()),
        ("def test(clock: FakeClock) -> None: ...", set()),
    ],
)
def test_the_need_signs_find_what_they_should(source: str, needs: set[str]) -> None:
    assert needs_seen(ast.parse(source)) == needs


def test_every_module_is_marked_with_what_it_needs() -> None:
    wrong: dict[str, str] = {}
    for path in all_test_modules():
        where = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        marks = module_marks(tree) | param_marks(tree)
        if where in PENDING_MARKS:
            continue
        if where.startswith("tests/unit/"):
            used = _marks(tree) & {"integration", *NEEDS}
            if used or needs_seen(tree):
                wrong[where] = f"a unit test needs nothing outside the process: {used}"
        elif where.startswith("tests/integration/") and "integration" not in marks:
            wrong[where] = "pytestmark lacks pytest.mark.integration"
        elif missing := needs_seen(tree) - marks:
            wrong[where] = f"pytestmark lacks {sorted(missing)}"
    assert wrong == {}


def test_pending_marks_are_still_pending() -> None:
    for where, wanted in PENDING_MARKS.items():
        path = ROOT / where
        if path.exists():
            marks = module_marks(ast.parse(path.read_text(encoding="utf-8")))
            assert marks != wanted, f"{where} is marked now: remove it from PENDING_MARKS"
