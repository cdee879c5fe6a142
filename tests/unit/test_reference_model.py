"""The reference model (harness/reference.py) stays independent of what it checks.

Rule (written in the model's docstring): the model imports the standard library only. It
is what the differential test and the chaos runs hold the worker's tables against; if it
imported ``streams``, ``agents``, ``tables`` or ``orders`` (or another ``harness`` module,
which may import them), a bug there — a schema rule, a state transition — would be
reproduced by the model and the comparison would agree with it. Third-party packages are
refused too: the model is plain Python written from the contract and the README.

The imports are read from the source with the layout rules' reader (every ``import`` and
``from … import`` anywhere in the module, function-local ones included).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.unit.test_layout_rules import ROOT, imports_of

MODEL = ROOT / "harness" / "reference.py"


def foreign_imports(path: Path) -> list[str]:
    """Each import of ``path`` that is not the standard library, as ``module:line imports x``."""
    found = imports_of("harness.reference", path, set())
    return [i.where() for i in found
            if i.target.split(".")[0] not in sys.stdlib_module_names and i.target != "__future__"]


def test_the_reference_model_imports_the_standard_library_only() -> None:
    assert MODEL.exists()
    assert imports_of("harness.reference", MODEL, set()), "the reader found no import at all"
    offenders = foreign_imports(MODEL)
    assert not offenders, ("the reference model must not import what it checks (standard library only):\n"
                           + "\n".join(offenders))


def test_the_check_sees_a_service_import_even_inside_a_function(tmp_path: Path) -> None:
    copy = tmp_path / "reference.py"
    copy.write_text(MODEL.read_text()
                    + "\n\ndef _later():\n    from streams.events import OrderPaid\n    return OrderPaid\n"
                    + "\nimport agents.inventory\nimport pydantic\n")
    offenders = foreign_imports(copy)
    assert [o.split(" imports ")[1] for o in offenders] == ["streams.events", "agents.inventory", "pydantic"]
