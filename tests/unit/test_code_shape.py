"""The product's code keeps the shape issue 11 asks for: small modules, short functions, and
one module per basename, so a reader who meets ``sse.py`` knows which one is meant.

Read with ``ast`` (no import), so the test sees every file, whatever it would import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("broker", "hub", "workers", "scheduler", "web", "cli", "client", "devtools", "bench")
MAX_FUNCTION_LINES = 55
MAX_MODULE_LINES = 400
SHARED_BASENAMES = {"__init__", "__main__", "app"}
"""Names more than one package may use: package markers, ``python -m`` entry points, and the
three role entry points ``web/app.py``, ``workers/app.py``, ``scheduler/app.py`` that
``compose.yaml`` names as deployment targets."""

def product_modules() -> list[Path]:
    """Every Python module of the product packages, as paths relative to the repository."""
    found = [
        path.relative_to(ROOT) for package in PRODUCT_PACKAGES for path in (ROOT / package).rglob("*.py")
    ]
    assert found, "no product modules found: has the layout moved?"
    return sorted(found)


def long_functions(path: Path, limit: int) -> list[str]:
    """``path:line name (N lines)`` for each function or method longer than ``limit`` lines."""
    tree = ast.parse((ROOT / path).read_text(), filename=str(path))
    return [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = [found for path in product_modules() for found in long_functions(path, MAX_FUNCTION_LINES)]
    assert too_long == [], f"functions over {MAX_FUNCTION_LINES} lines (split them): {too_long}"


def test_no_module_is_too_big() -> None:
    sizes = {path: len((ROOT / path).read_text().splitlines()) for path in product_modules()}
    too_big = {str(path): lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert too_big == {}, f"modules over {MAX_MODULE_LINES} lines (split them): {too_big}"


def test_every_module_basename_is_unique() -> None:
    homes: dict[str, list[str]] = defaultdict(list)
    for path in product_modules():
        if path.stem not in SHARED_BASENAMES:
            homes[path.stem].append(str(path))
    shared = {name: paths for name, paths in homes.items() if len(paths) > 1}
    assert shared == {}, f"module names used more than once (rename one): {shared}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The length check counts a function's lines, decorators aside, down to its last line."""
    module = tmp_path / "sample.py"
    module.write_text("@decorator\ndef short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * 60)
    assert long_functions(module, 60) == [f"{module}:6 long (61 lines)"]
    assert long_functions(module, 61) == []
