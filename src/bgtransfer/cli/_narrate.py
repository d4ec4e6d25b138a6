"""What the CLI tells a person while it follows a transfer, and small value formats.

A line on stderr for every retry, resume, restart and suspension, with or without a terminal
(with one, the lines go above the bar); durations as people write them; dates."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click

__all__ = [
    "Narrator",
    "duration",
    "iso_time",
    "local_time",
    "parse_duration",
    "suspended_by_daemon",
]

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*\Z", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "5m", "1.5h", "7d", "2w"; ValueError otherwise."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration (like 30s, 5m, 2h, 7d): {text!r}")
    return float(m.group(1)) * _UNIT[(m.group(2) or "s").lower()]


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: a duration option's value in seconds (a usage error otherwise)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def local_time(epoch: float | None) -> str:
    """For people: the local time with its zone, to the second."""
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def iso_time(epoch: float | None) -> str | None:
    """For machines: ISO 8601 with the local UTC offset, to the millisecond."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="milliseconds")


def suspended_by_daemon(task: dict[str, Any]) -> bool:
    """Suspended, but not by a person: the daemon stopped it (disk full, the file cannot be
    written) and waits for someone to fix that and resume it."""
    return bool(task["state"] == "suspended" and task["detail"] != "suspended")


def _pct(task: dict[str, Any]) -> str:
    total = task["bytes_expected"]
    done = task["bytes_sent"] if task.get("kind") == "upload" else task["bytes_received"]
    return f"{100 * done / total:.0f} %" if total else f"byte {done}"


class Narrator:
    """Turns successive reads of one task into lines worth telling, each told once.

    Live reads catch most retries and resumes as they happen; the task's history (every
    request, durable) tells those that came and went between two reads."""

    def __init__(self) -> None:
        self.last_detail = ""
        self.told: set[tuple[int, str]] = set()  # (attempt, "retry" | "resume")
        self.checked = 0  # attempts up to this one were compared with the history

    def lines(self, task: dict[str, Any]) -> list[str]:
        detail, n = task["detail"], int(task["attempts"])
        out: list[str] = []
        if detail != self.last_detail:
            if detail.startswith("retrying") and (n, "retry") not in self.told:
                self.told.add((n, "retry"))
                out.append(f"{detail} (attempt {n})")
            elif "resumed at byte" in detail and (n, "resume") not in self.told:
                self.told.add((n, "resume"))
                out.append(f"{detail} at {_pct(task)} (attempt {n})")
            elif detail.startswith("restarting"):
                out.append(f"{detail} (attempt {n})")
            elif task["state"] == "suspended":
                if suspended_by_daemon(task):
                    out.append(detail)
                else:
                    out.append(f"suspended at {_pct(task)} (bgtransfer resume {task['id'][:12]})")
        self.last_detail = detail
        return out

    def missed(self, task: dict[str, Any]) -> bool:
        """Whether attempts ended since the history was last read (then it is read again:
        a retry or resume may have come and gone between two reads)."""
        return int(task["attempts"]) - 1 > self.checked or task["state"] == "completed"

    def from_history(self, task: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
        out = []
        segmented = int(task.get("segments") or 1) > 1  # ranges are normal there
        for a in history:
            if a.get("ended_at") is None:
                continue  # under way: its outcome is not known yet
            n = int(a["n"])
            start, outcome = a.get("range_start"), str(a.get("outcome") or "")
            resumed = not segmented and start and a.get("status") == 206
            if resumed and (n, "resume") not in self.told:
                self.told.add((n, "resume"))
                out.append(f"resumed at byte {start} (attempt {n})")
            if outcome.startswith("retrying") and (n, "retry") not in self.told:
                self.told.add((n, "retry"))
                out.append(f"{outcome} (attempt {n})")
            self.checked = max(self.checked, n)
        return out
