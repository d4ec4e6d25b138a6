"""Validation of the scheduling options (start_at, max_rate, priority, every) at the boundary."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._schedule import PRIORITIES, parse_duration, parse_rate

__all__ = ["check_every", "check_rate", "check_scheduling", "local_time", "queued_detail"]

# Shortest job period: a fetch job is a poll, not a stream.
MIN_EVERY = 1.0


def local_time(epoch: float) -> str:
    """An unambiguous time for people: local ISO 8601 with its UTC offset."""
    return dt.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def queued_detail(start_at: float | None, now: float) -> str:
    if start_at is not None and start_at > now:
        return f"scheduled for {local_time(start_at)}"
    return "queued"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_rate(name: str, value: object) -> int | None:
    """Bytes per second: a positive integer, or curl's "4M" syntax; None: no cap."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise InvalidRequest(f"{name}: {exc}") from None
    if type(value) is not int or value < 1:
        raise InvalidRequest(f"{name} must be a positive number of bytes per second: {value!r}")
    return value


def check_scheduling(*, start_at: object, max_rate: object, priority: object) -> dict[str, Any]:
    """Spec keyword arguments for the three options; InvalidRequest names a bad one."""
    when: float | None = None
    if start_at is not None:
        if isinstance(start_at, dt.datetime):
            aware = start_at if start_at.tzinfo is not None else start_at.astimezone()
            when = aware.timestamp()
        elif isinstance(start_at, int | float) and not isinstance(start_at, bool):
            when = float(start_at)
        if when is None or not math.isfinite(when) or when < 0:
            raise InvalidRequest(
                f"start_at must be a time in seconds since the epoch (or a datetime): {start_at!r}"
            )
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise InvalidRequest(f"priority must be 'high', 'normal' or 'low', not {priority!r}")
    return {
        "start_at": when,
        "max_rate": check_rate("max_rate", max_rate),
        "priority": priority,
    }


def check_every(every: object) -> float:
    """A job's period: seconds (a number) or a duration string ("15m", "1h")."""
    if isinstance(every, str):
        try:
            seconds = parse_duration(every)
        except ValueError as exc:
            raise InvalidRequest(f"every: {exc}") from None
    elif isinstance(every, dt.timedelta):
        seconds = every.total_seconds()
    elif _number(every):
        seconds = float(every)  # type: ignore[arg-type]
    else:
        raise InvalidRequest(f"every must be seconds or a duration like '1h': {every!r}")
    if not math.isfinite(seconds) or seconds < MIN_EVERY:
        raise InvalidRequest(f"every must be at least {MIN_EVERY:g} s: {every!r}")
    return seconds
