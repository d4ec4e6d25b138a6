"""The CLI's small pure helpers: durations, URL password redaction, what gets told."""

from __future__ import annotations

from typing import Any

import pytest

from bgtransfer._redact import redact
from bgtransfer.cli._narrate import Narrator, parse_duration, suspended_by_daemon


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("7d", 604800), ("2w", 1209600),
     ("250ms", 0.25), (" 3 S ", 3), (".5s", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "5y", "1e3", "five", "1 h 2 m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:p@h/x", "http://u:***@h/x"),
        ("HTTPS://u:p@h:8/x?a=b@c", "HTTPS://u:***@h:8/x?a=b@c"),
        ("http://u:p@ss@h/x", "http://u:***@h/x"),  # a raw "@" in the password
        ("https://bob@h/", "https://bob@h/"),  # no password: nothing to hide
        ("http://h/a@b", "http://h/a@b"),  # "@" in the path
        ("a http://u:1@h/ and http://v:2@k/", "a http://u:***@h/ and http://v:***@k/"),
        ("'http://user:secret@[::1/x'", "'http://user:***@[::1/x'"),
        ("no url here: a@b", "no url here: a@b"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def task(detail: str, attempts: int, state: str = "running", **kw: Any) -> dict[str, Any]:
    return {"id": "ab" * 16, "detail": detail, "attempts": attempts, "state": state,
            "bytes_received": 50, "bytes_expected": 100, "segments": 1, **kw}  # fmt: skip


def test_each_retry_and_resume_is_told_once() -> None:
    n = Narrator()
    assert n.lines(task("connecting", 1)) == []
    assert n.lines(task("retrying in 1.0 s after x", 1)) == [
        "retrying in 1.0 s after x (attempt 1)"
    ]
    assert n.lines(task("retrying in 1.0 s after x", 1)) == []
    assert n.lines(task("downloading (resumed at byte 50)", 2)) == [
        "downloading (resumed at byte 50) at 50 % (attempt 2)"
    ]
    assert n.lines(task("suspended", 2, "suspended")) == [
        "suspended at 50 % (bgtransfer resume abababababab)"
    ]


def test_the_history_tells_what_came_and_went_between_two_reads() -> None:
    n = Narrator()
    n.lines(task("retrying in 1.0 s after x", 1))
    cur = task("downloading (resumed at byte 60)", 3)
    assert n.missed(cur)
    history: list[dict[str, Any]] = [
        {"n": 1, "range_start": None, "status": 200, "outcome": "retrying in 1.0 s after x",
         "ended_at": 1.0},
        {"n": 2, "range_start": 30, "status": 206, "outcome": "retrying in 2.0 s after y",
         "ended_at": 2.0},
        {"n": 3, "range_start": 60, "status": 206, "outcome": "in progress", "ended_at": None},
    ]  # fmt: skip
    assert n.from_history(cur, history) == [
        "resumed at byte 30 (attempt 2)",
        "retrying in 2.0 s after y (attempt 2)",
    ]
    assert not n.missed(cur)
    assert n.from_history(cur, history) == []  # told once
    segmented = task("downloading (4 segments)", 3, segments=4)
    m = Narrator()
    assert (
        m.from_history(segmented, [{"n": 1, "range_start": 9, "status": 206, "outcome": ""}]) == []
    )


def test_suspended_by_whom() -> None:
    assert not suspended_by_daemon(task("suspended", 1, "suspended"))
    assert suspended_by_daemon(task("suspended: cannot write f: No space left", 1, "suspended"))
    assert not suspended_by_daemon(task("retrying", 1))
