"""Rewrite ARCHITECTURE.md's generated blocks from tools/state_diagram.py; with ``--check``,
only say whether they are current (exit 1 when stale: tests/test_architecture.py runs it)."""

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


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = DOC.read_text(encoding="utf-8")
    blocks = len(_BLOCK.findall(text))
    new = _BLOCK.sub(lambda m: m[1] + _render(m["args"].split()) + m[4], text)
    if check:
        if blocks < 2:
            print("ARCHITECTURE.md lost its generated diagram or table", file=sys.stderr)
            return 1
        if new != text:
            print(
                "ARCHITECTURE.md is stale: run python tools/sync_architecture.py", file=sys.stderr
            )
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
