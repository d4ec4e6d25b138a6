"""Shared fixtures: one real fault-injecting server per test session, temp homes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from bgtransfer.testing import FaultServer


@pytest.fixture(scope="session")
def server() -> Iterator[FaultServer]:
    with FaultServer(other_host=True) as srv:
        yield srv


@pytest.fixture
def key() -> str:
    """A unique fault key, so fault counters never leak between tests."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGTRANSFER_HOME", raising=False)
    monkeypatch.delenv("BGTRANSFER_STORE", raising=False)  # a developer's fleet stays out
    monkeypatch.delenv("NO_COLOR", raising=False)


def listing(directory: str | os.PathLike[str]) -> list[str]:
    return sorted(os.listdir(directory))
