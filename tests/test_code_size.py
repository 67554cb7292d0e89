"""Code health that a review would otherwise have to catch: no library function grows past 60 lines.

The CLI modules are exempt (a click command lists its options in its signature). A long function hides several jobs;
split it into named steps instead of raising the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import segbench

MAX_FUNCTION_LINES = 60
PACKAGE = Path(segbench.__file__).resolve().parent


def long_functions(root: Path, *, limit: int) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_library_function_is_over_60_lines():
    assert long_functions(PACKAGE, limit=MAX_FUNCTION_LINES) == []


def test_the_scan_finds_a_long_function(tmp_path: Path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text(f"def long():\n{body}\n", encoding="utf-8")
    (tmp_path / "pkg" / "cli").mkdir()
    (tmp_path / "pkg" / "cli" / "command.py").write_text(f"def command():\n{body}\n", encoding="utf-8")
    assert long_functions(tmp_path / "pkg", limit=MAX_FUNCTION_LINES) == ["pkg/long.py:1 long (61 lines)"]
