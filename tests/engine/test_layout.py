"""The engine package's shape (issue 15): no import cycle, TYPE_CHECKING imports included;
the drivers know a narrow context, not the Engine; modules small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import bgtransfer._engine as package

ROOT = Path(package.__file__).parent
PREFIX = "bgtransfer._engine."
# Everything the engine runs a task with; only the Engine itself may import the Engine.
DRIVERS = (
    "_context",
    "_download",
    "_finalize",
    "_history",
    "_live",
    "_pacing",
    "_recovery",
    "_scheduler",
    "_segments",
    "_space",
    "_upload",
    "_watchdog",
)


def imports(path: Path) -> set[str]:
    """Every engine module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n[len(PREFIX) :].split(".")[0] for n in names if n.startswith(PREFIX))
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) - {p.stem} for p in ROOT.glob("*.py") if p.stem != "__init__"}


def test_imports_include_type_checking_blocks(tmp_path: Path) -> None:
    """The cycle this package had was only under TYPE_CHECKING: such imports count."""
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bgtransfer._engine._engine import Engine\n"
        "def f() -> None:\n"
        "    import bgtransfer._engine._live\n"
    )
    assert imports(module) == {"_engine", "_live"}


def test_no_import_cycle_in_the_engine() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_drivers_do_not_import_the_engine() -> None:
    g = graph()
    assert set(DRIVERS) <= set(g), sorted(set(DRIVERS) - set(g))
    assert {d for d in DRIVERS if "_engine" in g[d]} == set()


def test_no_engine_module_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in ROOT.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
