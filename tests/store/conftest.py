"""Store fixtures: ``backend`` and ``store`` run a test once per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtransfer._store._base import Store
from tests.store.backends import Backend, SQLiteBackend

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path)
    raise AssertionError(request.param)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    try:
        yield s
    finally:
        s.close()
