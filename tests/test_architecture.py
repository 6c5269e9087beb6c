"""The product package's structure, checked from its source (issue 10).

- no import cycle inside `xnatdrop`;
- only `xnatdrop.xnat` speaks HTTP to XNAT: no other module imports an HTTP library, except
  the two that speak HTTP to other servers, each allowed by name with the reason;
- only `xnatdrop.dimse` speaks DICOM (imports pynetdicom);
- only the `sandbox` and `demo` subcommands import the sandbox (`xnat_sandbox`, its own
  top-level package);
- no module over 500 lines, and no C source or header over 500 lines in either package (the
  sandbox's compiled walker too: the sandbox's Python is not held to the product's rules).

How the import graph is built: every module under service/xnatdrop is parsed with `ast`; nothing
is imported or run. Every import statement counts wherever it stands: at module level, inside a
function (a deferred import is still a dependency; the config ↔ rules cycle hid that way) and
under `if TYPE_CHECKING:` (a type-only import still ties the two designs together). `from A
import B` is an edge to the module A.B when there is one (a submodule), else to A. Importing a
submodule also runs its package's `__init__`, but that edge is not drawn: a package's facade
importing its own parts is what a facade does. A part importing its package's facade back is
drawn (`from xnatdrop.xnat import X` inside xnat/), and is a cycle.

The failure message of each rule lists every offending import with its file and line.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "service"
PRODUCT = "xnatdrop"

# Libraries that speak HTTP (as a client, or serving it).
HTTP_LIBRARIES = (
    "requests",
    "urllib3",
    "httpx",
    "aiohttp",
    "http.client",
    "http.server",
    "urllib.request",
    "prometheus_client",
)
# The one package that speaks HTTP to XNAT.
HTTP_TO_XNAT = "xnatdrop.xnat"
# Modules that speak HTTP to servers other than XNAT: allowed by name, each with its reason.
HTTP_ELSEWHERE = {
    "xnatdrop.notify.ping": "GETs the dead-man's-switch URL of a monitoring service, not XNAT",
    "xnatdrop.notify.metrics": "serves /metrics to Prometheus (prometheus_client's own server)",
}
DICOM_LIBRARIES = ("pynetdicom",)
DICOM_NETWORKING = "xnatdrop.dimse"
SANDBOX = "xnat_sandbox"
SANDBOX_STARTERS = frozenset({"xnatdrop.commands.sandbox", "xnatdrop.commands.demo"})
MAX_LINES = 500


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement of `module`: what it names (`target`, dotted) and where it is."""

    module: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of `package` under `root`, and every .c
    file (the source of a compiled module of the same name: it imports no Python module, and
    `from pkg import _compiled` names it rather than the package's facade)."""
    found = {}
    paths = [*(root / package).rglob("*.py"), *(root / package).rglob("*.c")]
    for path in sorted(paths):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute dotted name an ImportFrom starts from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import anywhere in one file, as dotted names: `import a.b` names a.b, `from a
    import b` names a.b (the caller decides whether that is a module or a name in a)."""
    if path.suffix != ".py":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}", path, node.lineno)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def edges(modules: dict[str, Path], package: str) -> dict[str, set[str]]:
    """module → the modules of `package` it imports (see the module docstring)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for found in imports_of(name, path):
            if not _within(found.target, package):
                continue
            target = found.target
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]  # a name inside a module, not a module
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def importers(modules: dict[str, Path], libraries: Iterable[str]) -> dict[str, list[Import]]:
    """module → its imports of any of `libraries` (a library or any part of it)."""
    wanted = tuple(libraries)
    found: dict[str, list[Import]] = {}
    for name, path in modules.items():
        for one in imports_of(name, path):
            if any(_within(one.target, library) for library in wanted):
                found.setdefault(name, []).append(one)
    return found


def _described(found: dict[str, list[Import]]) -> str:
    return "\n".join(str(one) for imports in found.values() for one in imports)


@pytest.fixture(scope="module")
def product() -> dict[str, Path]:
    modules = module_files(PACKAGE_ROOT, PRODUCT)
    assert "xnatdrop.xnat" in modules and "xnatdrop.cli" in modules, PACKAGE_ROOT
    return modules


# -- the checker itself, on a package made for it -----------------------------------------------


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return module_files(root, "pkg")


def test_the_checker_sees_deferred_type_only_relative_and_facade_imports(tmp_path: Path) -> None:
    """A cycle through a function-level import, one through a TYPE_CHECKING import, one through
    a relative import, and a part importing its own package's facade are each found; a facade
    importing its parts, and a name imported from a module, are not cycles."""
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg import b\n",
            "pkg/b.py": "import pkg.a\n",
            "pkg/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import d\n",
            "pkg/d.py": "from pkg.c import NAME\n",
            "pkg/e.py": "from . import f\n",
            "pkg/f.py": "from .e import thing\n",
            "pkg/sub/__init__.py": "from pkg.sub.part import X\n",
            "pkg/sub/part.py": "from pkg.sub import Y\n",
            "pkg/fine/__init__.py": "from pkg.fine.one import X\nfrom pkg.fine import two\n",
            "pkg/fine/one.py": "from pkg.fine.two import Y\nimport requests\n",
            "pkg/fine/two.py": "import json\n",
        },
    )
    assert cycles(edges(modules, "pkg")) == [
        ["pkg.a", "pkg.b"],
        ["pkg.c", "pkg.d"],
        ["pkg.e", "pkg.f"],
        ["pkg.sub", "pkg.sub.part"],
    ]
    found = importers(modules, HTTP_LIBRARIES)
    assert list(found) == ["pkg.fine.one"]
    assert str(found["pkg.fine.one"][0]).endswith("pkg/fine/one.py:2 imports requests")


# -- the rules, on xnatdrop ---------------------------------------------------------------------


def test_no_import_cycle_in_the_product_package(product: dict[str, Path]) -> None:
    found = cycles(edges(product, PRODUCT))
    assert found == [], "import cycles in xnatdrop:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_only_the_xnat_package_speaks_http_and_the_others_say_why(
    product: dict[str, Path],
) -> None:
    """Every HTTP import outside `xnatdrop.xnat` is in HTTP_ELSEWHERE, and every entry there
    is still used, so the list cannot grow stale."""
    found = importers(product, HTTP_LIBRARIES)
    assert any(_within(name, HTTP_TO_XNAT) for name in found), "xnatdrop.xnat imports no HTTP?"
    others = {n: i for n, i in found.items() if not _within(n, HTTP_TO_XNAT)}
    unexplained = {n: i for n, i in others.items() if n not in HTTP_ELSEWHERE}
    assert not unexplained, "HTTP outside xnatdrop.xnat:\n" + _described(unexplained)
    assert set(HTTP_ELSEWHERE) == set(others), "allowed but no longer speaking HTTP"


def test_only_dimse_speaks_dicom(product: dict[str, Path]) -> None:
    found = importers(product, DICOM_LIBRARIES)
    assert any(_within(name, DICOM_NETWORKING) for name in found), "dimse imports no pynetdicom?"
    others = {n: i for n, i in found.items() if not _within(n, DICOM_NETWORKING)}
    assert not others, "DICOM networking outside xnatdrop.dimse:\n" + _described(others)


def test_only_the_sandbox_commands_import_the_sandbox(product: dict[str, Path]) -> None:
    found = importers(product, [SANDBOX])
    others = {n: i for n, i in found.items() if n not in SANDBOX_STARTERS}
    assert not others, "the sandbox imported outside its commands:\n" + _described(others)


def test_no_module_over_500_lines(product: dict[str, Path]) -> None:
    long = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in product.items()
    }
    over = {name: lines for name, lines in long.items() if lines > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: {over}"


def c_sources(root: Path, packages: Iterable[str]) -> list[Path]:
    """Every C source and header of `packages` under `root`: the .c files of the compiled
    modules, and the files and headers they are built from (one extension may be several)."""
    found = []
    for package in packages:
        found += [*(root / package).rglob("*.c"), *(root / package).rglob("*.h")]
    return sorted(found)


def test_no_c_source_over_500_lines() -> None:
    """The product's .c files are counted as modules above; this also counts its headers and
    the sandbox's C (its header walker), which is as hard to read at 700 lines as Python is."""
    sources = c_sources(PACKAGE_ROOT, [PRODUCT, SANDBOX])
    assert any(path.suffix == ".c" and SANDBOX in path.parts for path in sources), PACKAGE_ROOT
    long = {
        str(path.relative_to(PACKAGE_ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sources
    }
    over = {name: lines for name, lines in long.items() if lines > MAX_LINES}
    assert over == {}, f"C sources over {MAX_LINES} lines: {over}"
