"""The sandbox package's shape: its own product, its imports one way, its modules small.

The import graph is read from the source with `ast`, so it sees every import: at module level,
inside functions and under `if TYPE_CHECKING:` alike, since each of them ties one module to
another for a reader. `from xnat_sandbox import archive` is an edge to `archive`;
`from xnat_sandbox.users import User` an edge to `users`; the package's `__init__.py`, a facade
that re-exports for callers outside, is left out of the graph (every module is inside it).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import xnat_sandbox
from xnat_sandbox import context, server

PACKAGE = Path(xnat_sandbox.__file__).parent
NAME = "xnat_sandbox"

#: The modules allowed past ~500 lines: none since the import parser was split (issue 13:
#: importstream, importjob, importroute, entrywriter.write_entry, dicomzip the handler).
SIZE_EXCEPTIONS: set[str] = set()
MAX_LINES = 500


def modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def imports(path: Path) -> set[str]:
    """Every top-level module name `path` imports, absolute or relative, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside this package
                base = NAME + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    own = modules()
    edges: dict[str, set[str]] = {}
    for name, path in own.items():
        targets = set()
        for imported in imports(path):
            parts = imported.split(".")
            if parts[0] == NAME and len(parts) > 1 and parts[1] in own:
                targets.add(parts[1])
        edges[name] = targets - {name}
    return edges


def test_the_graph_reader_sees_imports_at_every_depth(tmp_path: Path) -> None:
    """The reader itself: a function-level and a TYPE_CHECKING import count as edges."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "from xnat_sandbox import tables\n"
        "if TYPE_CHECKING:\n"
        "    from xnat_sandbox.server import Sandbox\n"
        "def f():\n"
        "    import xnat_sandbox.archive\n"
        "    from . import prefs\n",
        encoding="utf-8",
    )
    seen = imports(sample)
    assert {"xnat_sandbox.tables", "xnat_sandbox.server", "xnat_sandbox.archive"} <= seen
    assert "xnat_sandbox.prefs" in seen


def test_no_import_circle_inside_the_sandbox() -> None:
    """Every module can be read after the ones it imports: the server on top, the endpoints
    under it, the model under them."""
    try:
        graphlib.TopologicalSorter(graph()).prepare()
    except graphlib.CycleError as error:
        pytest.fail("import circle: " + " -> ".join(error.args[1]))


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("archive", "prearchive_endpoints"),  # commit in an auto-archiving project archives
        ("archive", "prearchive_rebuilder"),  # the rebuilder auto-archives
        ("prearchive", "archive"),  # the archiver reads the prearchive model
        ("context", "wire"),  # handlers see the sandbox as a SiteContext
    ],
)
def test_the_prearchive_endpoints_sit_above_the_archive_logic(lower: str, upper: str) -> None:
    edges = graph()
    assert lower in edges[upper]
    assert not _reaches(edges, lower, upper), f"{lower} must not import {upper}, even indirectly"


def test_no_endpoint_module_imports_the_server() -> None:
    """Only the package facade imports `server`; handlers get a `context.SiteContext`."""
    edges = graph()
    assert [name for name, targets in edges.items() if "server" in targets] == []


def test_the_sandbox_imports_nothing_from_xnatdrop() -> None:
    """A second product in the same distribution: it must run without xnatdrop's code."""
    offenders = {
        path.name: sorted(i for i in imports(path) if i.split(".")[0] == "xnatdrop")
        for path in PACKAGE.glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_every_module_is_small_but_the_import_parser() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in modules().items()
        if name not in SIZE_EXCEPTIONS
    }
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_the_sandbox_is_the_site_context_its_handlers_see(sandbox: server.Sandbox) -> None:
    """Every member the protocol names exists on a running sandbox."""
    assert isinstance(sandbox, context.SiteContext)


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return False
