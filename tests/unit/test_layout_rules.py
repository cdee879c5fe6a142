"""The layout's import rules (issue 24, items 2 and 3), checked by reading the source.

What counts as an import: every ``import`` and ``from … import`` statement anywhere in a
module — at module level *and* inside functions, methods and other blocks (a function-local
import is a dependency that runs later, not no dependency), plus
``importlib.import_module("a.literal")``. Imports under ``if TYPE_CHECKING:`` are not
counted: they never run. ``import a.b.c`` depends on ``a.b.c``; ``from a.b import c`` depends
on the module ``a.b.c`` when there is one, otherwise on ``a.b`` (``c`` is a name in it).
Importing a module also runs its parent packages' ``__init__``; that is not counted as an
edge, as in every import-graph tool (it would make each package ``__init__`` a cycle with
everything it re-exports).

The project's modules are every ``.py`` file under ``streams/``, ``agents/``, ``tables/``,
``orders/`` and ``bench/``.

The rules:

(a) **The engine is self-contained.** A module in ``streams/engine/`` imports only
    ``streams.engine.*``, the standard library and the third-party packages declared in
    ``pyproject.toml``'s ``[project] dependencies``. It is the part that must be readable and
    testable without the app around it (no settings, registry, events, Faust wiring).
(b) **No cycles among modules.** A cycle is reported as the list of modules around it.
(c) **No cycles among packages.** A module's node is its parent package (``streams.http.web``
    → ``streams.http``; a package's ``__init__`` is the package itself), *except* modules
    directly in ``streams/`` (``assembly``, ``registry``, ``worker``, ``settings``, ``logs``,
    ``metrics``, …), each of which is a node of its own. Why: ``streams/`` top level is not a
    role folder but the app's assembly — the composition root imports every folder, and the
    folders import settings, logs and metrics. Folding them into one ``streams`` node would
    report that intended shape as a cycle of every folder with ``streams`` and hide the real
    ones behind it; as separate nodes, a loop such as ``http → assembly → http`` still shows.
(d) **bench/ never imports tests/.** Benchmarks use the shared harness, not test modules.
(e) **The console's HTML helpers load no Kafka client**, however indirectly
    (:func:`test_the_console_html_helpers_need_no_kafka_client`).

Each failure names the offending module (and line) or the modules around the cycle.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_ROOTS = ("streams", "agents", "tables", "orders", "bench", "harness")
ENGINE = "streams.engine"
APP_PACKAGE = "streams"  # its direct modules are package-graph nodes of their own (rule c)


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import
    target: str  # dotted name imported (resolved to the deepest known module when possible)
    line: int

    def where(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


# -- reading the source -------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files(root: Path, roots: Iterable[str] = PROJECT_ROOTS) -> dict[str, Path]:
    """Module name → path, for every ``.py`` file under the given top-level folders."""
    found: dict[str, Path] = {}
    for top in roots:
        for path in sorted((root / top).rglob("*.py")):
            if ".venv" in path.parts or "__pycache__" in path.parts:
                continue
            found[module_name(path, root)] = path
    return found


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` (its ``else``
    runs, so it is kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from statements(other)
            continue
        yield child
        yield from statements(child)


def raw_imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """(base, names, line): ``import a.b`` → ("a.b", [], n); ``from a import b, c`` →
    ("a", ["b", "c"], n); relative imports resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base, [a.name for a in node.names], node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, [], node.lineno


def resolve(name: str, known: set[str]) -> str:
    """The deepest prefix of ``name`` that is a known module (else ``name`` itself)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return name


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for base, names, line in raw_imports(tree, module, path.name == "__init__.py"):
        if not names:
            found.append(Import(module, resolve(base, known), line))
            continue
        for name in names:
            full = f"{base}.{name}"
            target = full if full in known else resolve(base, known)
            found.append(Import(module, target, line))
    return list(dict.fromkeys(found))  # ``from a import b, c`` of one module: one import


@functools.cache
def all_imports(root: Path = ROOT, roots: tuple[str, ...] = PROJECT_ROOTS) -> list[Import]:
    """Every import of the modules under ``roots`` (read once per test session; callers
    must not change the list)."""
    files = project_files(root, roots)
    known = set(files) | set(project_files(root, ("tests",)))  # tests/ only to name rule (d)'s targets
    out: list[Import] = []
    for module, path in files.items():
        out.extend(imports_of(module, path, known))
    return out


# -- the graphs ---------------------------------------------------------------------------


def is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_ROOTS


def package_node(module: str, packages: set[str]) -> str:
    """Rule (c)'s node: a package's ``__init__`` is the package; a module directly in
    ``streams/`` is itself; any other module is its parent package."""
    if module in packages:
        return module
    parent = module.rpartition(".")[0]
    if parent == APP_PACKAGE or not parent:
        return module
    return parent


def module_graph(imports: Iterable[Import]) -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        if is_project(imp.target) and imp.target != imp.importer:
            graph.setdefault(imp.importer, {}).setdefault(imp.target, []).append(imp)
    return graph


def package_graph(imports: Iterable[Import], packages: set[str]) -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        if not is_project(imp.target):
            continue
        a, b = package_node(imp.importer, packages), package_node(imp.target, packages)
        if a != b:
            graph.setdefault(a, {}).setdefault(b, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); the components with more than one node, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for edges in graph.values() for t in edges})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def a_cycle(graph: dict[str, dict[str, list[Import]]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: the shortest path from its
    first node back to itself, as [n0, n1, …, n0]."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe_cycles(graph: dict[str, dict[str, list[Import]]]) -> list[str]:
    lines = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        lines.append(f"cycle {cycle}")
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {a} -> {b}: " + "; ".join(i.where() for i in graph[a][b][:3]))
        if len(component) > len(cycle) - 1:
            lines.append(f"    (the loop joins {len(component)} nodes: {component})")
    return lines


# -- declared dependencies ----------------------------------------------------------------


def canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared_distributions(root: Path = ROOT) -> set[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonical(re.match(r"[A-Za-z0-9._-]+", spec).group(0)) for spec in project.get("dependencies", [])}


def engine_offenders(imports: Iterable[Import], declared: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    offenders = []
    for imp in imports:
        if imp.importer != ENGINE and not imp.importer.startswith(ENGINE + "."):
            continue
        top = imp.target.split(".")[0]
        if imp.target == ENGINE or imp.target.startswith(ENGINE + "."):
            continue
        if is_project(imp.target):
            offenders.append(f"{imp.where()} (a project module outside {ENGINE})")
        elif top in sys.stdlib_module_names:
            continue
        elif not {canonical(d) for d in providers.get(top, [])} & declared:
            dists = providers.get(top) or ["no installed distribution"]
            offenders.append(f"{imp.where()} ({', '.join(dists)}: not in pyproject's dependencies)")
    return offenders


# -- the tests ----------------------------------------------------------------------------


def test_what_counts_as_an_import(tmp_path: Path) -> None:
    """The module docstring's definition, on a package written for the purpose."""
    pkg = tmp_path / "streams" / "http"
    pkg.mkdir(parents=True)
    (tmp_path / "streams" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "sessions.py").write_text("")
    (tmp_path / "streams" / "assembly.py").write_text("")
    (pkg / "web.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sessions\n"  # relative: a module
        "from .. import http\n"  # relative, two levels: the package
        "if TYPE_CHECKING:\n    from streams.worker import Worker\n"
        "else:\n    import json\n"
        "def later():\n    import importlib\n    importlib.import_module('streams.assembly')\n"
        "    from streams.http.sessions import Sessions, valid\n"
    )
    found = {(i.target, i.line) for i in all_imports(tmp_path, ("streams",)) if i.importer == "streams.http.web"}
    assert found == {("typing", 1), ("streams.http.sessions", 2), ("streams.http", 3), ("json", 7),
                     ("importlib", 9), ("streams.assembly", 10), ("streams.http.sessions", 11)}


def test_the_walk_sees_the_project() -> None:
    """The checks below pass vacuously if the walk finds nothing: it must see the engine,
    bench/, function-local imports, and skip TYPE_CHECKING ones."""
    imports = all_imports()
    importers = {i.importer for i in imports}
    assert {"streams.engine.pipeline", "streams.assembly", "agents.notifications", "orders.api", "bench.chaos"} <= importers
    # streams/__init__ imports settings inside __getattr__ and assembly via import_module
    assert {i.target for i in imports if i.importer == "streams"} >= {"streams.settings", "streams.assembly"}
    # web.py imports Worker only under TYPE_CHECKING
    assert "streams.worker" not in {i.target for i in imports if i.importer == "streams.http.web"}


def test_the_engine_imports_only_itself_the_standard_library_and_declared_dependencies() -> None:
    offenders = engine_offenders(all_imports(), declared_distributions())
    assert not offenders, "streams/engine/ must import only itself, the standard library and " \
        "pyproject's dependencies:\n" + "\n".join(offenders)


def test_no_cycles_among_modules() -> None:
    cycles = describe_cycles(module_graph(all_imports()))
    assert not cycles, "import cycles among the project's modules:\n" + "\n".join(cycles)


def test_no_cycles_among_packages() -> None:
    files = project_files(ROOT)
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    cycles = describe_cycles(package_graph(all_imports(), packages))
    assert not cycles, "import cycles among the project's packages (streams/*.py each a node):\n" + "\n".join(cycles)


def reached(start: str, imports: Iterable[Import]) -> dict[str, list[str]]:
    """Every name ``start`` imports, directly or through project modules → one import
    chain that gets there."""
    edges: dict[str, list[str]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, []).append(imp.target)
    chains = {start: [start]}
    todo = [start]
    while todo:
        module = todo.pop()
        for target in edges.get(module, []):
            if target not in chains:
                chains[target] = [*chains[module], target]
                if is_project(target):
                    todo.append(target)
    return chains


def test_the_console_html_helpers_need_no_kafka_client() -> None:
    """Rule (from issue 24): escaping text for a page is not a reason to load a Kafka
    client — ``console/html.py`` and the escaping it uses (``streams/ops/text.py``) reach
    neither aiokafka nor Faust, however indirectly."""
    imports = all_imports()
    offenders = []
    for start in ("streams.http.console.html", "streams.ops.text"):
        chains = reached(start, imports)
        for client in ("aiokafka", "faust"):
            found = [chain for name, chain in chains.items() if name.split(".")[0] == client]
            if found:
                offenders.append(" -> ".join(min(found, key=len)))
    assert not offenders, "the console's HTML helpers import a Kafka client:\n" + "\n".join(offenders)


def test_bench_never_imports_tests() -> None:
    offenders = [
        i.where() for i in all_imports(roots=("bench",)) if i.target == "tests" or i.target.startswith("tests.")
    ]
    assert not offenders, "bench/ imports tests/ (use the shared harness instead):\n" + "\n".join(offenders)
