"""Small functions (issue 24 item 6): no function or method in the project's non-test
code is longer than 80 lines.

Rule: a function's length is ``end_lineno - lineno + 1`` as ``ast`` reports it: from
its ``def`` line (decorators excluded) to its last line, docstring included. A
function nested in another counts inside its parent too, so a 200-line factory that
defines a class is one offender however short the methods are. Checked: every
``.py`` file under streams/, agents/, tables/, orders/ and bench/ except test files
(``test_*.py``, ``*_test.py``, ``conftest.py``). The test fails listing every
offender as ``path:line name (N lines)``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("streams", "agents", "tables", "orders", "bench", "harness")
LIMIT = 80


def is_test_file(path: Path) -> bool:
    name = path.name
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def source_files(root: Path = ROOT) -> Iterator[Path]:
    for folder in CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            if not is_test_file(path):
                yield path


def long_functions(path: Path, *, limit: int = LIMIT, root: Path = ROOT) -> list[str]:
    """``path:line name (N lines)`` for each function in ``path`` longer than ``limit``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if length > limit:
                found.append((node.lineno, f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)"))
    return [text for _, text in sorted(found)]


def test_no_function_is_longer_than_80_lines() -> None:
    offenders = [o for path in source_files() for o in long_functions(path)]
    assert not offenders, (f"{len(offenders)} function(s) longer than {LIMIT} lines "
                           f"(split them into named pieces):\n" + "\n".join(offenders))


def test_length_counts_from_def_to_last_line_docstring_included_decorators_not(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT - 2))  # + def + docstring = LIMIT lines
    module = tmp_path / "m.py"
    module.write_text(f"@decorator\n@another\ndef fits():\n    '''Doc.'''\n{body}\n\n"
                      f"class C:\n    async def over(self):\n        '''Doc.'''\n        y = 0\n"
                      + body.replace("    ", "        ") + "\n")
    assert long_functions(module, root=tmp_path) == ["m.py:85 over (81 lines)"]  # 2 + 80 + blank + class


def test_test_files_are_not_checked(tmp_path: Path) -> None:
    for name in ("test_x.py", "x_test.py", "conftest.py"):
        assert is_test_file(tmp_path / name)
    assert not is_test_file(tmp_path / "testing.py")
