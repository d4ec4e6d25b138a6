"""Rewrite ARCHITECTURE.md's generated blocks from tools/state_diagram.py (see the test in
tests/test_architecture.py, which fails when they differ)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"
_BLOCK = re.compile(
    r"(<!-- generated: tools/state_diagram\.py(?P<args>[^>]*?) -->\n)"
    r"(?P<body>.*?)(<!-- end generated -->)",
    re.DOTALL,
)


def _render(args: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "state_diagram.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out if "--table" in args else f"```mermaid\n{out}```\n"


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    new = _BLOCK.sub(lambda m: m[1] + _render(m["args"].split()) + m[4], text)
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
