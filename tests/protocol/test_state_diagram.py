"""The state diagram script draws the machine's own transition table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgtransfer._models import Phase
from bgtransfer._protocol._transitions import TRANSITIONS, UPLOAD_TRANSITIONS

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "state_diagram.py"


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize(
    ("args", "table"), [((), TRANSITIONS), (("--uploads",), UPLOAD_TRANSITIONS)]
)
def test_the_diagram_has_every_phase_and_every_move_of_the_table(
    args: tuple[str, ...], table: dict[type, object]
) -> None:
    out = run(*args)
    assert out.startswith("stateDiagram-v2\n")
    for phase in Phase:
        assert f'state "{phase.value} (' in out, phase
        assert re.search(rf"\b{phase.name}\b.*-->|-->.*\b{phase.name}\b", out), phase
    arrows = {
        (m[1], m[2]): set(m[3].split(", "))
        for m in re.finditer(r"^    (\w+) --> (\w+) : (.+)$", out, re.MULTILINE)
    }
    expected: dict[tuple[str, str], set[str]] = {}
    for kind, rule in table.items():
        for src, targets in rule.moves.items():  # type: ignore[attr-defined]
            for dst in targets:
                if dst is not src:
                    expected.setdefault((src.name, dst.name), set()).add(kind.__name__)
    assert arrows == expected
    assert "[*] --> QUEUED" in out
    assert "DONE --> [*]" in out


def test_the_upload_diagram_has_the_upload_events_and_no_response() -> None:
    out = run("--uploads")
    for name in ("UploadCreated", "UploadProgress", "UploadLost", "FinalResponse"):
        assert name in out
    assert "Response," not in out.replace("FinalResponse", "")
    assert "UploadCreated" not in run()


def test_the_machine_module_still_offers_every_name_it_had() -> None:
    # The engine reads M.<name> from bgtransfer._protocol._machine: every event, action,
    # Spec and Snapshot stays importable there (uploads' own events live in _upload).
    from bgtransfer._protocol import _actions, _events, _machine, _task, _upload

    uploads = {"UploadCreated", "UploadProgress", "UploadLost", "FinalResponse", "UploadEvent"}
    for name in {*_actions.__all__, *_events.__all__, *_task.__all__} - uploads:
        assert name in _machine.__all__, name
        assert getattr(_machine, name) is getattr(
            _actions if name in _actions.__all__ else _events if name in _events.__all__ else _task,
            name,
        )
    for name in uploads - {"UploadEvent"}:
        assert name in _upload.__all__, name
