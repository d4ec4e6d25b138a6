"""ARCHITECTURE.md's state diagram and event table are the machine's own table, not a copy
that can drift: each generated block must equal what tools/state_diagram.py prints now."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"
_BLOCK = re.compile(
    r"<!-- generated: tools/state_diagram\.py(?P<args>[^>]*?) -->\n"
    r"(?P<body>.*?)<!-- end generated -->",
    re.DOTALL,
)


def _tool(args: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "state_diagram.py"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout


def _expected(args: list[str]) -> str:
    text = _tool(args)
    return text if "--table" in args else f"```mermaid\n{text}```\n"


def test_the_generated_blocks_are_what_the_tool_prints() -> None:
    blocks = list(_BLOCK.finditer(DOC.read_text(encoding="utf-8")))
    assert len(blocks) >= 2, "ARCHITECTURE.md lost its generated diagram or table"
    for block in blocks:
        args = block["args"].split()
        assert block["body"] == _expected(args), (
            f"ARCHITECTURE.md is stale: run `python tools/sync_architecture.py` ({args})"
        )


def test_the_table_names_every_event_the_machine_knows() -> None:
    from bgtransfer._protocol._transitions import TRANSITIONS

    table = _tool(["--table"])
    for kind in TRANSITIONS:
        assert f"| `{kind.__name__}` |" in table
