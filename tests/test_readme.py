"""Every code block of README.md runs as written (issue 12 item 3).

Conventions (README authors: follow them, and this test keeps the README honest):

- Blocks fenced as ``python``, ``console``, ``sh`` or ``bash`` are run; any other language
  (``javascript``, ``text``, tables) is not.
- ``<!-- no-run: REASON -->`` on the line just before the opening fence skips that block:
  only for what cannot run here (``make demo``/``make test`` at the top would run the whole
  suite again; something that needs a terminal or another machine). Give the reason.
- Examples talk to the project's test server at ``http://127.0.0.1:8080`` (a reader starts
  it with ``bgtransfer serve-test --port 8080 &``). Here ``127.0.0.1:8080`` is replaced by
  the address of a FaultServer this test starts, except in a console/sh block that starts
  its own ``bgtransfer serve-test --port 8080``: it gets a free port of its own instead.
- ``python``: the block is one script, run with this interpreter.
- ``console``: the lines starting with ``$ `` are the commands (a line ending in ``\\``
  continues on the next one); the other lines are example output and are not compared.
- ``sh``/``bash``: the whole block is the script.
- Shell blocks run under ``bash -euo pipefail``: every command must succeed (write
  ``|| true`` or ``; echo $?`` where a non-zero exit is the point). Background jobs (``&``)
  are killed at the end.
- Each block runs in a fresh directory with a fresh ``$HOME`` (so the default home is
  ``~/.local/state/bgtransfer`` in there, with no ``BGTRANSFER_HOME``), ``bgtransfer`` on
  ``PATH``, and at most ``TIMEOUT`` seconds; every daemon it started is killed afterwards.

A failure names the README line of the block, so a block added later is easy to find.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bgtransfer.testing import FaultServer
from tests.daemon.conftest import kill_daemon

README = Path(__file__).resolve().parent.parent / "README.md"
RUN = {"python", "console", "sh", "bash"}
TIMEOUT = 100.0
PORT = "127.0.0.1:8080"
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
_NO_RUN = re.compile(r"<!--\s*no-run:\s*(\S.*?)\s*-->")
_OWN_SERVER = re.compile(r"bgtransfer serve-test\b[^\n]*--port 8080")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the no-run reason


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _NO_RUN.search(prev)
        out.append(Block(start + 1, lang, "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return out


def console_commands(code: str) -> str:
    """The ``$ `` lines of a console transcript, continuations joined."""
    out: list[str] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            cmd = [lines[i][2:]]
            while cmd[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            out.append("\n".join(cmd))
        i += 1
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ALL = blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_runnable_blocks_and_the_parser_sees_them() -> None:
    runnable = [b for b in ALL if b.lang in RUN and b.skip is None]
    assert len(runnable) >= 8, [(b.line, b.lang) for b in ALL]
    for b in ALL:
        assert b.lang, f"README.md line {b.line}: a code block needs a language"
    assert console_commands("$ a \\\n  b\nout\n$ c\n") == "a \\\n  b\nc\n"


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.lang in RUN], ids=lambda b: f"line{b.line}-{b.lang}"
)
def test_readme_block_runs_as_written(block: Block, server: FaultServer, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md line {block.line}: no-run: {block.skip}")
    code = console_commands(block.code) if block.lang == "console" else block.code
    if block.lang != "python" and _OWN_SERVER.search(code):
        port = free_port()
        code = code.replace(PORT, f"127.0.0.1:{port}").replace("--port 8080", f"--port {port}")
    else:
        code = code.replace(PORT, f"127.0.0.1:{server.port}")
    work, user_home = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    user_home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BGTRANSFER_", "XDG_")) and k != "NO_COLOR"
    }
    env.update(
        HOME=str(user_home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    if block.lang == "python":
        script = work / "example.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        script = work / "example.sh"
        script.write_text(
            "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + code, encoding="utf-8"
        )
        argv = ["bash", "-euo", "pipefail", str(script)]
    try:
        r = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        outcome = f"exit {r.returncode}"
        out, err = r.stdout, r.stderr
        ok = r.returncode == 0
    except subprocess.TimeoutExpired as exc:
        outcome = f"no end within {TIMEOUT:g} s"
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        ok = False
    finally:
        for lock in tmp_path.rglob("daemon.lock"):
            kill_daemon(lock.parent)
    assert ok, (
        f"README.md line {block.line}: the {block.lang} block failed ({outcome})\n"
        f"--- code as run ---\n{code}--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    )
