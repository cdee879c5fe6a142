"""A test that needs an external program says so, and is not a unit test (issue 24, item 7).

The rule (tests/conftest.py, where ``@pytest.mark.needs`` is enforced at collection and
setup): tests/unit runs on a machine with nothing but Python and the project's Python
packages. This module finds, by reading the source, the two ways a test reaches for a
program without saying so:

- a module under tests/unit that looks a program up (``shutil.which``) or imports a helper
  that starts one (:data:`PROGRAM_HELPERS`): it needs one, so it belongs in
  tests/integration (or another folder) with a ``needs`` mark;
- a test anywhere under tests/ that looks a program up without a ``needs`` mark (on the
  function, or on the module's ``pytestmark``).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: test helpers that start an external program (PostgreSQL, a SASL_SSL Kafka, Chromium)
PROGRAM_HELPERS = ("harness.postgres", "tests.support.secure_kafka", "tests.browser")


def looks_up_a_program(node: ast.AST) -> list[int]:
    """Lines of ``shutil.which(…)`` / ``which(…)`` calls in ``node``."""
    lines = []
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Attribute) and f.attr == "which") or (isinstance(f, ast.Name) and f.id == "which"):
                lines.append(n.lineno)
    return lines


def has_needs_mark(decorators: list[ast.expr]) -> bool:
    """``pytest.mark.needs(…)`` among ``decorators`` (or in a list assigned to pytestmark)."""
    for d in decorators:
        for n in ast.walk(d):
            if isinstance(n, ast.Attribute) and n.attr == "needs":
                return True
    return False


def module_needs_mark(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in stmt.targets):
            return has_needs_mark([stmt.value])
    return False


def imports_a_program_helper(node: ast.AST) -> list[int]:
    """Lines importing one of :data:`PROGRAM_HELPERS` (or a module inside one)."""
    lines = []
    for n in ast.walk(node):
        names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                 else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
        if any(name == h or name.startswith(h + ".") for name in names for h in PROGRAM_HELPERS):
            lines.append(n.lineno)
    return lines


def test_no_unit_test_module_looks_up_or_starts_a_program() -> None:
    offenders = [f"{path.relative_to(TESTS.parent)}:{line}"
                 for path in sorted((TESTS / "unit").rglob("*.py"))
                 for tree in [ast.parse(path.read_text(), str(path))]
                 for line in looks_up_a_program(tree) + imports_a_program_helper(tree)]
    assert not offenders, ("tests/unit needs no external program; these look one up or start one (move the test to "
                           "tests/integration with @pytest.mark.needs(...)): " + ", ".join(offenders))


def test_every_test_that_looks_up_a_program_has_a_needs_mark() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        marked_module = module_needs_mark(tree)
        marked_classes = {id(fn) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef)
                          and has_needs_mark(cls.decorator_list) for fn in cls.body}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name.startswith("test"):
                lines = looks_up_a_program(fn)
                if lines and not (marked_module or id(fn) in marked_classes or has_needs_mark(fn.decorator_list)):
                    offenders.append(f"{path.relative_to(TESTS.parent)}:{lines[0]} ({fn.name})")
    assert not offenders, "tests that look a program up without @pytest.mark.needs(...): " + ", ".join(offenders)
