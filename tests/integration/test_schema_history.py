"""The committed schemas against git's record of them (issue 22, item 3): a published
``vN`` stays what was first committed, beyond title/description, however it was changed
— the model changed and the file regenerated, the file edited by hand, or deleted and
exported again. Runs git, so not a unit test (tests/conftest.py, ``needs``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from streams.events import OrderPaid
from streams.events.schemas import HistoryUnavailable, ROOT, dumps, published_changes, schema_of
from tests.unit.test_schema_gate import OrderPaidWithNote

pytestmark = pytest.mark.needs("git")

REL = "schemas/order.paid.v1.json"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, timeout=60)


def commit(repo: Path, text: str | None, message: str) -> None:
    path = repo / REL
    if text is None:
        git(repo, "rm", "-q", REL)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        git(repo, "add", REL)
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository that published OrderPaid v1 as the project did."""
    assert shutil.which("git")
    git(tmp_path, "init", "-q")
    commit(tmp_path, dumps(schema_of(OrderPaid)), "publish order.paid.v1")
    return tmp_path


def test_no_published_schema_of_this_repository_changed():
    """This checkout's own history. A shallow clone is deepened first (``git fetch
    --unshallow`` from its origin). A checkout that has no history to read (not a git
    repository, or shallow with no origin to deepen from) says so on stdout and checks
    nothing here: what the models export is still compared with the committed files
    (tests/unit/test_schema_gate.py), and the fixtures above show the check itself."""
    try:
        changes = published_changes(ROOT)
    except HistoryUnavailable as first:
        deepened = subprocess.run(["git", "-C", str(ROOT), "fetch", "--unshallow", "--quiet"],
                                  capture_output=True, text=True, timeout=300)
        try:
            changes = published_changes(ROOT)
        except HistoryUnavailable:
            print(f"\nschema history NOT checked in this checkout: {first}; git fetch --unshallow: "
                  f"{deepened.stderr.strip()[:200] or f'exit {deepened.returncode}'}")
            return
    assert changes == []


def test_a_published_schema_regenerated_from_a_changed_model_is_named(repo):
    assert published_changes(repo) == []
    commit(repo, dumps(schema_of(OrderPaidWithNote)), "an optional note, regenerated")
    [problem] = published_changes(repo)
    assert problem.startswith("order.paid.v1 is published (git ") and problem.endswith(
        "and frozen; new property in a closed schema at $.note: old readers reject records that carry it "
        "(add it in a new version)")


def test_a_hand_edited_enum_and_a_new_title_are_told_apart(repo):
    doc = schema_of(OrderPaid)
    commit(repo, dumps({**doc, "title": "Paid", "description": "words only"}), "documentation")
    assert published_changes(repo) == []
    doc["properties"]["version"] = {"enum": ["v1", "v2"], "default": "v1", "type": "string"}  # was const v1
    commit(repo, dumps(doc), "by hand")
    assert [p.split("frozen; ")[1] for p in published_changes(repo)] == [
        'widened enum at $.version: "v2" now allowed (old readers reject it)']


def test_a_published_schema_deleted_is_named_even_if_exported_again(repo):
    commit(repo, None, "gone")
    assert published_changes(repo) == [f"order.paid.v1 was published and its schema is gone: restore {REL}"]
    commit(repo, dumps(schema_of(OrderPaidWithNote)), "exported again, as new")
    assert [p.split("frozen; ")[1].split(":")[0] for p in published_changes(repo)] == [
        "new property in a closed schema at $.note"]


def test_a_shallow_clone_cannot_pass_by_comparing_a_file_with_itself(repo, tmp_path_factory):
    commit(repo, dumps(schema_of(OrderPaidWithNote)), "changed")
    shallow = tmp_path_factory.mktemp("shallow") / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)], check=True,
                   capture_output=True, timeout=60)
    with pytest.raises(HistoryUnavailable, match="shallow clone"):
        published_changes(shallow)
    assert json.loads((shallow / REL).read_text())["properties"]["note"]  # the change is in the clone
