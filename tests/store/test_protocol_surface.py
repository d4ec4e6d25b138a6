"""The Store protocol is exactly what its callers use: no store method is called that the
protocol lacks (a second backend would not have it), and no member is dead weight (every
backend would have to implement it for nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

from bgtransfer._store._base import Store

SRC = Path(__file__).resolve().parents[2] / "src" / "bgtransfer"


def _calls_on_stores() -> dict[str, set[str]]:
    """``<...>.store.NAME`` and ``<...>._store.NAME`` in the product outside the store."""
    used: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if "_store" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            name = (
                holder.attr
                if isinstance(holder, ast.Attribute)
                else holder.id
                if isinstance(holder, ast.Name)
                else None
            )
            if name in ("store", "_store"):
                used.setdefault(node.attr, set()).add(str(path.relative_to(SRC)))
    return used


def test_the_protocol_is_what_the_callers_use() -> None:
    members = {n for n in dir(Store) if not n.startswith("_")}
    used = _calls_on_stores()
    assert "next_queued" in used  # the scan finds the engine's calls
    missing = {n: sorted(f) for n, f in used.items() if n not in members}
    assert missing == {}, "called on a store but not in the Store protocol"
    assert sorted(members - set(used)) == [], "in the Store protocol but called nowhere"
