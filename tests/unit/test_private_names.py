"""Private names of other libraries are used in one place: streams/faust/compat.py.

Rule (streams/faust/compat.py's docstring; streams/faust/consumer.py's): an attribute
that starts with one underscore (``obj._name``) and is not defined in the module that
uses it — a library's private name — appears only in streams/faust/compat.py, where
tests/unit/test_faust_compat.py checks each one against the pinned versions. A module
may use its own private names (``self._last_committed`` assigned there, ``_helper``
defined there). Checked: every module under streams/ with ast. :data:`KNOWN` lists
the exceptions that exist today, by module and name; any other fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THE_PLACE = "streams/faust/compat.py"

#: module → private names of other libraries it uses today, and why they are not in compat.py
KNOWN: dict[str, tuple[frozenset[str], str]] = {
    "streams/http/web.py": (
        frozenset({"_runner", "_host", "_port", "_ssl_context", "_backlog", "_reuse_address", "_reuse_port",
                   "_kwargs", "_transport_handlers"}),
        "the connection guard: Faust's web driver (_runner, _transport_handlers) and aiohttp's "
        "AppRunner/TCPSite internals; tested by test_web_server_limits.py, not yet in compat.py",
    ),
    "streams/faust/transactions.py": (
        frozenset({"_sender", "_txn_manager", "_ensure_consumer", "_coordinator"}),
        "aiokafka's producer and consumer internals for exactly-once (issue 20): to move into compat.py",
    ),
}


def foreign_private_names(source: str) -> dict[str, int]:
    """``{name: first line}`` of each ``._name`` attribute not defined in ``source``."""
    tree = ast.parse(source)
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.attr not in own):
            found[node.attr] = min(found.get(node.attr, node.lineno), node.lineno)
    return found


def test_other_libraries_private_names_are_used_only_in_compat() -> None:
    offenders = []
    for path in sorted((ROOT / "streams").rglob("*.py")):
        module = path.relative_to(ROOT).as_posix()
        if module == THE_PLACE:
            continue
        allowed = KNOWN.get(module, (frozenset(), ""))[0]
        for name, line in sorted(foreign_private_names(path.read_text(encoding="utf-8")).items()):
            if name not in allowed:
                offenders.append(f"{module}:{line} .{name}")
    assert not offenders, ("private names of another library outside " + THE_PLACE
                           + " (add a function there, tested in test_faust_compat.py):\n" + "\n".join(offenders))


def test_a_module_s_own_private_names_are_not_foreign() -> None:
    source = ("class C:\n    def __init__(self):\n        self._mine = 1\n    def _helper(self):\n"
              "        return self._mine\n\ndef f(consumer):\n    return consumer._acked, C()._helper()\n")
    assert foreign_private_names(source) == {"_acked": 8}


def test_every_known_exception_still_exists() -> None:
    """An entry of :data:`KNOWN` that the code no longer needs is removed, so it cannot
    hide a new use."""
    for module, (names, _) in KNOWN.items():
        path = ROOT / module
        used = foreign_private_names(path.read_text(encoding="utf-8")) if path.exists() else {}
        assert names <= used.keys(), f"{module}: {sorted(names - used.keys())} no longer used: remove from KNOWN"
