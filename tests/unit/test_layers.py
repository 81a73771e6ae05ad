"""The layout's rules, checked rather than advised (docs/architecture.md).

* ``stream.core`` (and the replay's ``decide`` and ``report``) is pure: each module imports
  with ``confluent_kafka``, ``aiohttp`` and ``prometheus_client`` unimportable, and loads
  nothing of ddsync beyond ``stream.core``, ``stream.clock``, ``stream.settings`` and
  ``stream.redaction`` (no configuration loader, no I/O edge).
* ``stream.dotdigital`` is a client library: it imports nothing of the application
  (``test_client_config.py``).
* No import cycle between ddsync's modules, counting imports under ``TYPE_CHECKING`` and inside
  functions: a cycle hidden from the interpreter is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream

ROOT = Path(stream.__file__).parent
EDGE_LIBRARIES = ("confluent_kafka", "aiohttp", "prometheus_client")
CORE_MAY_LOAD = ("stream", "stream.core", "stream.clock", "stream.settings", "stream.redaction")


def modules() -> list[str]:
    found = (info.name for info in pkgutil.walk_packages([str(ROOT)], prefix="stream."))
    return sorted(["stream", *found])


# Pure modules outside the core: the replay's decisions and reports (its Kafka edge is runner).
PURE_ELSEWHERE = ("stream.replay.decide", "stream.replay.report")


def pure_modules() -> list[str]:
    return [n for n in modules() if n.startswith("stream.core.") or n in PURE_ELSEWHERE]


@pytest.mark.parametrize("module", pure_modules())
def test_a_pure_module_imports_without_the_edge_libraries(module: str) -> None:
    script = (
        "import sys\n"
        f"for name in {EDGE_LIBRARIES!r}:\n"
        "    sys.modules[name] = None\n"
        f"import {module}\n"
        "print('\\n'.join(sorted(n for n in sys.modules if n.startswith('stream'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    strays = [
        name
        for name in loaded
        if name not in CORE_MAY_LOAD
        and not name.startswith("stream.core.")
        and name not in ("stream.replay", *PURE_ELSEWHERE)
    ]
    assert strays == [], f"{module} loads {strays}"


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for source, target in edges():
        graph[source].add(target)
    cycles = list(find_cycles(graph))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def edges() -> Iterator[tuple[str, str]]:
    """Every import of a ddsync module by another, wherever it is written in the file (under
    ``TYPE_CHECKING``, inside a function); ``from package import name`` counts as an import of
    the submodule ``name`` when there is one, else of the package."""
    known = set(modules())
    for name in known:
        path = source_path(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for target in imported(node, name, path.name == "__init__.py", known):
                resolved = longest_known(target, known)
                if resolved is not None and resolved != name:
                    yield name, resolved


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            keep = len(parts) - node.level + (1 if is_package else 0)
            base = ".".join(parts[:keep] + ([base] if base else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            yield submodule if submodule in known else base


def longest_known(target: str, known: set[str]) -> str | None:
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def source_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = ROOT / relative / "__init__.py"
    return package if package.exists() else ROOT / relative.with_suffix(".py")


def find_cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                yield from visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)
