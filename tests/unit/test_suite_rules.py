"""Rules for the test suite itself, checked by reading its source (issue 26).

A test must be able to fail: every test function asserts something, directly (an
``assert``, ``pytest.raises`` / ``pytest.fail`` / ``pytest.warns``, a ``raise``) or by
calling a helper that does. A helper *asserts* when its body has an ``assert``, a
``raise`` or one of those ``pytest`` calls, or calls another helper that asserts; the
helpers are the functions and methods defined in ``tests/support``, ``tests/conftest.py``,
``tests/unit/fakes.py``, ``bench/`` (the chaos tests run its scenarios), ``harness/``,
``streams/engine/testing.py`` and the test's
own module. Names are matched by their last part (``kafka.wait_consumed(…)``,
``self.persisted(…)``), which errs on the side of passing: this check finds tests that
assert nothing at all, it does not judge what they assert. One exception: a call through
a module the file imports from outside the project's helpers (``asyncio.run(…)``,
``subprocess.run(…)``) is that library's function, never a helper of the same name
(``bench``'s ``run`` asserts; ``asyncio.run`` let a test that asserts nothing pass).

The few tests that pass by not raising are listed in :data:`ALLOWED`, each with why that
is the behaviour under test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
HELPER_SOURCES = [TESTS / "support", TESTS / "conftest.py", TESTS / "unit" / "fakes.py", ROOT / "bench",
                  ROOT / "harness", ROOT / "streams" / "engine" / "testing.py"]

#: "path::test" → why the test asserts nothing (kept short; every entry must still be needed)
ALLOWED: dict[str, str] = {
    "tests/unit/test_kafka_connection.py::test_check_access_waits_out_an_unreachable_broker_and_skips_plaintext":
        "an unreachable broker is an outage, not a settings error: check_access returning is the behaviour",
}

PYTEST_CHECKS = {"raises", "fail", "warns", "deprecated_call"}  # a skip or xfail asserts nothing
#: top-level packages whose modules hold helpers: a call through one of them may be a helper's
HELPER_PACKAGES = {"tests", "harness", "bench", "streams"}


def python_files(where: Path) -> Iterator[Path]:
    if where.is_file():
        yield where
    elif where.is_dir():
        yield from sorted(p for p in where.rglob("*.py") if ".venv" not in p.parts)


def called_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def checks_directly(node: ast.AST) -> bool:
    """An ``assert``, a ``raise`` or a ``pytest.raises/fail/…`` anywhere in ``node``."""
    for n in ast.walk(node):
        if isinstance(n, (ast.Assert, ast.Raise)):
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in PYTEST_CHECKS \
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "pytest":
            return True
    return False


def foreign_modules(tree: ast.AST) -> set[str]:
    """Names ``import x`` / ``import x.y`` / ``import x as y`` bind to a module outside
    :data:`HELPER_PACKAGES` (``asyncio``, ``subprocess``, ``json`` …)."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for alias in n.names:
                if alias.name.split(".")[0] not in HELPER_PACKAGES:
                    out.add(alias.asname or alias.name.split(".")[0])
    return out


def calls(node: ast.AST, foreign: set[str] = frozenset()) -> set[str]:
    """Names of the functions ``node`` calls, but for calls through a ``foreign`` module."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and (name := called_name(n)):
            f = n.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in foreign:
                continue
            out.add(name)
    return out


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield n


class CallGraph:
    """Which functions call which (by name), and which assert directly."""

    def __init__(self) -> None:
        self.calls: dict[str, set[str]] = {}
        self.direct: set[str] = set()

    def add(self, tree: ast.AST) -> "CallGraph":
        foreign = foreign_modules(tree)
        for fn in functions(tree):
            if fn.name.startswith("test"):
                continue  # tests are not helpers
            self.calls.setdefault(fn.name, set()).update(calls(fn, foreign))
            if checks_directly(fn):
                self.direct.add(fn.name)
        return self

    def copy(self) -> "CallGraph":
        other = CallGraph()
        other.calls = {k: set(v) for k, v in self.calls.items()}
        other.direct = set(self.direct)
        return other

    def asserting(self) -> set[str]:
        """Functions that assert, directly or through each other (a fixed point)."""
        found = set(self.direct)
        grew = True
        while grew:
            grew = False
            for name, called in self.calls.items():
                if name not in found and called & found:
                    found.add(name)
                    grew = True
        return found


def asserting_helpers(trees: list[ast.AST], base: CallGraph | None = None) -> set[str]:
    graph = base.copy() if base else CallGraph()
    for tree in trees:
        graph.add(tree)
    return graph.asserting()


def collected_tests(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Module-level ``test*`` functions and ``test*`` methods of classes (pytest collects
    those of ``Test*`` classes; a contract base class's are collected through them)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    yield item


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def vacuous_tests() -> dict[str, int]:
    """"path::test" → line of every test function that asserts nothing."""
    shared = CallGraph()
    for where in HELPER_SOURCES:
        for p in python_files(where):
            shared.add(parse(p))
    found: dict[str, int] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = parse(path)
        helpers = asserting_helpers([tree], shared)
        foreign = foreign_modules(tree)
        for fn in collected_tests(tree):
            if not checks_directly(fn) and not calls(fn, foreign) & helpers:
                found[f"{path.relative_to(ROOT)}::{fn.name}"] = fn.lineno
    return found


def test_every_test_function_asserts_or_calls_a_helper_that_does():
    found = vacuous_tests()
    unexplained = {name: line for name, line in found.items() if name not in ALLOWED}
    assert not unexplained, (
        "test functions that assert nothing and call no helper that asserts (add an assertion, "
        "or list them in ALLOWED with why not raising is the behaviour under test):\n"
        + "\n".join(f"  {name} (line {line})" for name, line in unexplained.items()))
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED lists tests that now assert (or are gone): {stale}"


def test_the_scan_finds_a_test_that_asserts_nothing():
    """The scan itself can fail: a test calling only a non-asserting helper is found,
    one calling an asserting helper (two calls deep) or using pytest.raises is not."""
    tree = ast.parse(
        "def quiet(x):\n    return x + 1\n"
        "def check(x):\n    assert x\n"
        "def via(x):\n    check(x)\n"
        "def test_vacuous():\n    quiet(1)\n"
        "def test_through_a_helper():\n    via(quiet(1))\n"
        "async def test_raises():\n    with pytest.raises(ValueError):\n        quiet(1)\n"
        "class TestSome:\n    def test_method(self):\n        self.other()\n"
        "import asyncio\n"
        "def run(x):\n    assert x\n"
        "def test_through_asyncio():\n    asyncio.run(quiet(1))\n"
        "def test_through_run():\n    run(quiet(1))\n"
    )
    helpers = asserting_helpers([tree])
    assert helpers == {"check", "via", "run"}
    foreign = foreign_modules(tree)
    vacuous = [fn.name for fn in collected_tests(tree) if not checks_directly(fn) and not calls(fn, foreign) & helpers]
    assert vacuous == ["test_vacuous", "test_method", "test_through_asyncio"]
