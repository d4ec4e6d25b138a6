from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import bgtransfer


@pytest.fixture
def session(tmp_path: Path) -> Iterator[bgtransfer.Session]:
    with bgtransfer.Session("tests", home=tmp_path / "home", background=False) as s:
        yield s
