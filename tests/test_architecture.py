"""ARCHITECTURE.md's state diagram and event table are the machine's own table, not a copy
that can drift: each generated block must equal what tools/state_diagram.py prints now."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sync(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "sync_architecture.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_generated_blocks_are_what_the_tool_prints() -> None:
    done = _sync("--check")
    assert done.returncode == 0, done.stderr


def test_a_stale_block_is_caught_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    for name in ("sync_architecture.py", "state_diagram.py"):
        shutil.copy(ROOT / "tools" / name, tmp_path / "tools" / name)
    doc = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    stale = doc.replace("| `Start` | queued -> connecting, done |", "| `Start` | queued -> done |")
    assert stale != doc
    (tmp_path / "ARCHITECTURE.md").write_text(stale, encoding="utf-8")
    assert _sync("--check", root=tmp_path).returncode == 1
    assert _sync(root=tmp_path).returncode == 0
    assert (tmp_path / "ARCHITECTURE.md").read_text(encoding="utf-8") == doc


def test_the_table_names_every_event_the_machine_knows() -> None:
    from bgtransfer._protocol._transitions import TRANSITIONS

    doc = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for kind in TRANSITIONS:
        assert f"| `{kind.__name__}` |" in doc
