"""``harness/`` is shared by ``bench/`` and ``tests/`` (issue 24, item 7), so it never imports
``tests``: bench/ would then import the test suite again through it (bench/ importing
tests/ directly is tests/unit/test_layout_rules.py's rule). Every import counts, at module
level or inside a function, as in the layout rules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.append((n.lineno, n.module))
    return out


def test_harness_never_imports_tests() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "harness").rglob("*.py"))
                 for line, name in imported_modules(ast.parse(path.read_text(), str(path)))
                 if name == "tests" or name.startswith("tests.")]
    assert (ROOT / "harness" / "__init__.py").is_file()
    assert not offenders, "harness/ is shared with bench/ and must not import tests/: " + ", ".join(offenders)
