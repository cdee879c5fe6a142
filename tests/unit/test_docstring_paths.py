"""Every repository path and every dotted reference named in a docstring or comment of
non-test code exists.

A docstring that points at ``tests/unit/x.py`` or ``:func:`streams.x.y``` is how a
reader finds the rule's test or its evidence; after a move it silently points at
nothing. The rule, for the code under :data:`CODE`:

- a path into the repository (``streams/engine/pipeline.py``, ``tests/unit/x.py``,
  ``docs/x.md``, a folder such as ``bench/kafka-streams/``) names a file or folder that
  is in the repository;
- a Sphinx-style reference to a project module, class, function or attribute
  (``:mod:`streams.x```, ``:func:`~streams.x.y```, ``:meth:`T <streams.x.C.m>```) imports
  and resolves; a reference without a package (``:class:`Transaction```) resolves in the
  module it is written in, or its first name is at least defined somewhere in the
  project's code (a method of the class around it, a name of a sibling module); a
  capitalised first name defined nowhere is stale.

Placeholders and units are not paths: a path with ``<…>``, ``{…}`` or ``*`` in it is
skipped, and so is one that has neither a file suffix, nor a trailing ``/``, nor two
levels (``orders/s`` is a rate).
"""

from __future__ import annotations

import ast
import functools
import importlib
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Non-test code whose docstrings and comments are checked.
CODE = ("streams", "agents", "tables", "orders", "bench")
#: Top-level folders a path in a docstring may start with.
FOLDERS = ("streams", "agents", "tables", "orders", "bench", "tests", "docs", "deploy", "schemas",
           "scripts", "harness", "data")
#: Folders that are made by running something, not kept in the repository: what
#: .gitignore names by path (``bench/kafka-streams/target/``, ``data/``).
GENERATED = tuple(line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                  if line.strip().endswith("/") and "*" not in line and not line.startswith(("#", ".", "_")))
PACKAGES = ("streams", "agents", "tables", "orders", "bench")

PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./<>{}*\[\]-]*)" % "|".join(FOLDERS))
ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):`([^`]+)`")


def texts(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every docstring and comment of a module's source."""
    for node in definitions(ast.parse(source)):
        doc = ast.get_docstring(node, clean=False)
        if doc is not None:
            yield node.body[0].lineno, doc
    # Tokenizing is the slow part: only where a comment may name something.
    if any(PATH.search(line, line.find("#")) or ROLE.search(line, line.find("#"))
           for line in source.splitlines() if "#" in line):
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string


def definitions(node: ast.AST) -> Iterator[ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """The module and every class and function in it, at any depth of statements
    (expressions hold no docstrings, so they are not walked)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        yield node
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, name, ()):
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                yield from definitions(child)


def paths_in(text: str) -> Iterator[str]:
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".,;:)]'\"`-")
        if re.search(r"[<>{}*\[\]]", path):
            continue  # a placeholder (bench/results/<date>.json), not a path
        path = path.split("#")[0]
        if "." in path.rsplit("/", 1)[-1] or match.group(1).endswith("/") or path.count("/") >= 2:
            yield path


def missing_path(path: str) -> bool:
    if (ROOT / path).exists():
        return False
    return not any(path == g or path.startswith(g + "/") for g in GENERATED)


def targets_in(text: str) -> Iterator[str]:
    for match in ROLE.finditer(text):
        ref = match.group(1)
        inner = re.search(r"<([^>]+)>$", ref)
        ref = (inner.group(1) if inner else ref).strip().lstrip("~!").rstrip("()")
        if re.fullmatch(r"[A-Za-z_][\w.]*", ref):
            yield ref


def resolves(ref: str, module: str) -> bool:
    """True if ``ref`` names something that exists; a name outside the project (a first
    name neither a project package nor defined in ``module``) counts as existing."""
    parts = ref.split(".")
    if parts[0] in PACKAGES:
        for cut in range(len(parts), 0, -1):
            name = ".".join(parts[:cut])
            try:
                obj = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not (name + ".").startswith(exc.name + "."):
                    raise  # the module is there but imports something missing: say so
                continue
            return has_path(obj, parts[cut:])
        return False
    home = importlib.import_module(module)
    if hasattr(home, parts[0]):
        return has_path(home, parts)
    # A method of the class the docstring is in, a sibling module's name — or another
    # library's (``json.dumps``): a lower-case first name the project does not define
    # passes; a capitalised one (a class, a constant) the project defines nowhere is stale.
    return parts[0] in project_names() or not parts[0][:1].isupper()


@functools.cache
def project_names() -> frozenset[str]:
    """Every class, function, attribute and module-level name the project's code defines."""
    names: set[str] = set()
    for path in sources():
        names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return frozenset(names)


def has_path(obj: object, names: list[str]) -> bool:
    for name in names:
        annotations = getattr(obj, "__annotations__", {}) if isinstance(obj, type) else {}
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif name in annotations or name in getattr(obj, "__slots__", ()) or name in getattr(obj, "__dataclass_fields__", {}):
            return True  # an instance attribute declared on the class
        else:
            return False
    return True


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def sources() -> Iterator[Path]:
    for top in CODE:
        yield from sorted((ROOT / top).rglob("*.py"))


def stale_references() -> list[str]:
    stale = []
    for path in sources():
        rel = path.relative_to(ROOT)
        module = module_name(path)
        for line, text in texts(path.read_text()):
            for named in paths_in(text):
                if missing_path(named):
                    stale.append(f"{rel}:{line}: {named} does not exist")
            for ref in targets_in(text):
                if not resolves(ref, module):
                    stale.append(f"{rel}:{line}: {ref} does not resolve")
    return stale


def test_every_path_and_reference_named_in_a_docstring_or_comment_exists() -> None:
    stale = stale_references()
    assert not stale, "docstrings and comments name what is not there:\n" + "\n".join(stale)


def test_paths_and_references_are_found_where_they_are_written() -> None:
    source = '''"""See docs/x.md, streams/engine/pipeline.py and :func:`~streams.nowhere.f`."""
# tests/unit/test_gone.py checks it; bench/results/<date>.json is a placeholder
def f():
    """:meth:`Pipeline <streams.engine.pipeline.Pipeline.process>` and :class:`Gone`."""
'''
    found = [(line, p) for line, text in texts(source) for p in paths_in(text)]
    assert found == [(1, "docs/x.md"), (1, "streams/engine/pipeline.py"), (2, "tests/unit/test_gone.py")]
    refs = [r for _, text in texts(source) for r in targets_in(text)]
    assert refs == ["streams.nowhere.f", "streams.engine.pipeline.Pipeline.process", "Gone"]
    assert not resolves("streams.nowhere.f", "streams.engine.pipeline")
    assert resolves("streams.engine.pipeline.Pipeline.process", "streams.engine.pipeline")
    assert not resolves("Pipeline.gone", "streams.engine.pipeline")
    assert resolves("Pipeline.process", "streams.engine.pipeline")
    assert not resolves("Gone", "streams.engine.pipeline")  # a class defined nowhere
    assert resolves("ValidationFailed", "streams.engine.pipeline")  # defined in errors.py
