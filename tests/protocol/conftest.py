"""Order of the core's tests: the stateful Hypothesis runs (seconds each) go last.

``make mutate`` runs these tests with ``-x`` against every mutant of the core; a mutant that
a fast rule test kills should not first wait for a long random walk to pass.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: "MachineWorld" in item.nodeid)
