"""Order of the core's tests: worked examples first, Hypothesis searches after them, the
stateful random walk (seconds on its own) last.

``make mutate`` runs these tests with ``-x`` against every mutant of the core; a mutant that
an example kills in a millisecond should not first wait for a search to pass.
"""

from __future__ import annotations

import pytest


def _cost(item: pytest.Item) -> int:
    if "MachineWorld" in item.nodeid:
        return 2
    return 1 if getattr(getattr(item, "obj", None), "is_hypothesis_test", False) else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_cost)
