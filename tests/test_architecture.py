"""Structure rules of the package, checked on its source with ``ast``: no import cycle, and no run-directory name
spelled outside :mod:`segbench.rundir`."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from segbench import rundir

PACKAGE_ROOT = Path(rundir.__file__).resolve().parent
PACKAGE = PACKAGE_ROOT.name


def _module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (never executed, so not import edges)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def _containing(name: str) -> str:
    """The module name, as a prefix of what it imports: a package contains its submodules."""
    return name if _is_package(name) else name.rpartition(".")[0]


def _imported(importer: str, target: str) -> set[str]:
    """The package modules that importing ``target`` from ``importer`` executes.

    The target itself (its longest prefix that is a module), plus the ``__init__`` of every enclosing package that
    does not also enclose the importer (Python runs a package's ``__init__`` before its submodule; the importer's own
    packages are already initialised, and the top-level package is the same for every module).
    """
    parts = target.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    if not parts:
        return set()
    found = {".".join(parts)}
    home = _containing(importer)
    for depth in range(2, len(parts)):
        package = ".".join(parts[:depth])
        if not (home == package or home.startswith(package + ".")):
            found.add(package)
    return found


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _containing(importer).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module → package modules it imports, at any level (module top, functions, classes)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges |= _imported(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, node)
                for alias in node.names:
                    # `from pkg import sub` imports the submodule; `from pkg import attribute` imports pkg.
                    candidate = f"{base}.{alias.name}"
                    edges |= _imported(name, candidate if candidate in MODULES else base)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path of module names) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(component), graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A closed path start → … → start inside one strongly connected component (breadth-first, so a short one)."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & members):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_and_package_init_imports():
    graph = import_graph()
    assert f"{PACKAGE}.job" in graph[f"{PACKAGE}.executors.inprocess"]
    # A module outside the executors package importing one of its modules runs the package's __init__ first.
    assert f"{PACKAGE}.executors" in graph[f"{PACKAGE}.runner"]
    # `from segbench import rundir` is an edge to the submodule, not to the top-level package.
    assert f"{PACKAGE}.rundir" in graph[f"{PACKAGE}.job"] and PACKAGE not in graph[f"{PACKAGE}.job"]


# --- run-directory names ------------------------------------------------------------------------------------------

# Names that are only ever file names: found anywhere in a string literal (messages included).
FILE_NAMES = tuple(
    value
    for key, value in vars(rundir).items()
    if isinstance(value, str) and (key.endswith("_FILE") or key in ("PREVIOUS_SUFFIX", "CORRUPT_SUFFIX"))
)
# Folder names are ordinary words ("jobs", "report", "slurm"): found only where a literal is a path component.
FOLDER_NAMES = tuple(value for key, value in vars(rundir).items() if isinstance(value, str) and key.endswith("_DIR"))


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _path_operands(tree: ast.AST) -> set[int]:
    """ids of string constants used as an operand of ``/``: ``run_dir / "jobs"``, the parts of ``/ f"fold_{k}"``."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                parts = side.values if isinstance(side, ast.JoinedStr) else [side]
                ids.update(id(part) for part in parts if isinstance(part, ast.Constant))
    return ids


def run_directory_literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, literal) of every string literal in ``source`` that spells a run-directory name (docstrings aside)."""
    tree = ast.parse(source)
    docstrings, operands = _docstring_ids(tree), _path_operands(tree)
    file_pattern = re.compile(
        "|".join(rf"(?<![\w.]){re.escape(name)}(?!\w)" if name[0] != "." else re.escape(name) for name in FILE_NAMES)
    )
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
            continue
        text = node.value
        components = text.split("/")
        is_path = id(node) in operands or "/" in text
        if file_pattern.search(text) or (
            is_path and any(part in FOLDER_NAMES or part.startswith(rundir.FOLD_PREFIX) for part in components)
        ):
            yield node.lineno, text


def test_the_literal_finder_sees_files_folders_and_fold_names():
    source = (
        'x = run / "jobs" / m / f"fold_{k}"\ny = "result.json is missing"\nz = "*/fold_*/x"\n'
        'w = "jobs"\ncolumn = f"fold_{k}"\n'  # words and table columns are not paths
    )
    assert sorted(line for line, _ in run_directory_literals(source)) == [1, 1, 2, 3]


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name != rundir.__name__))
def test_no_run_directory_name_outside_the_layout_module(module: str):
    found = list(run_directory_literals(MODULES[module].read_text(encoding="utf-8")))
    assert not found, f"{module} spells run-directory names; use segbench.rundir instead: {found}"
