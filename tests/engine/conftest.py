from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import bgtransfer


@pytest.fixture
def session(tmp_path: Path) -> Iterator[bgtransfer.Session]:
    with bgtransfer.Session("tests", home=tmp_path / "home", background=False) as s:
        yield s


@pytest.fixture
def daemon_home(tmp_path: Path) -> Iterator[Path]:
    """A home for a background session; its daemon (started on demand) is stopped after."""
    home = tmp_path / "h"
    yield home
    if (home / "daemon.lock").exists():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run(
            [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "stop"],
            capture_output=True, timeout=60, env=env, check=False,
        )  # fmt: skip
