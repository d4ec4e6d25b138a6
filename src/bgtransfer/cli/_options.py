"""--start-at, --limit-rate and --priority for the submitting commands (get, add)."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from typing import Any

import click

from bgtransfer._protocol._schedule import PRIORITIES, parse_duration, parse_rate

__all__ = ["RATE", "SUBMIT_EXTRA", "WHEN", "parse_when", "rate_or_off", "scheduling_options"]

# ctx.meta key: the scheduling options of `get`/`add`, merged into the submit body.
SUBMIT_EXTRA = "bgtransfer.submit_extra"


def parse_when(text: str, now: float | None = None) -> float:
    """``--start-at``: seconds since the epoch, ``+15m`` (from now), or an ISO 8601 time
    (``2030-01-01T03:00``, local time unless it has an offset)."""
    now = time.time() if now is None else now
    s = text.strip()
    try:
        if s.startswith("+"):
            return now + parse_duration(s[1:])
        return float(s)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use seconds since the epoch, +DURATION (+15m, +2h) or an ISO time "
            "(2030-01-01T03:00)"
        ) from None
    return (when if when.tzinfo is not None else when.astimezone()).timestamp()


def rate_or_off(text: str) -> int | None:
    if text.strip().lower() in ("off", "none", "0", "unlimited"):
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _When(click.ParamType[float]):
    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        return value if isinstance(value, float) else parse_when(str(value))


class _Rate(click.ParamType[int]):
    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        rate = rate_or_off(str(value))
        if rate is None:
            self.fail("a transfer's rate must be positive (e.g. 500K, 4M)", param, ctx)
        return rate


WHEN = _When()
RATE = _Rate()

_OPTIONS = [
    click.option(
        "--start-at",
        "start_at",
        type=WHEN,
        default=None,
        help="Send no request before TIME: epoch seconds, +15m, or 2030-01-01T03:00.",
    ),
    click.option(
        "--limit-rate",
        "limit_rate",
        type=RATE,
        default=None,
        help="At most RATE bytes/s for this transfer (curl's syntax: 500K, 4M, 1G).",
    ),
    click.option(
        "--priority",
        type=click.Choice(list(PRIORITIES)),
        default=None,
        help="Queue order: high, normal (default) or low.",
    ),
    click.option(
        "--cacert",
        "cacert",
        type=click.Path(dir_okay=False),
        default=None,
        help="Verify HTTPS servers with the CA certificates of this PEM file instead of "
        "the system store (as curl --cacert).",
    ),
]


def scheduling_options(fn: Callable[..., int]) -> Callable[..., int]:
    """Add --start-at/--limit-rate/--priority and --cacert to a submitting command; their
    values reach the daemon through ``ctx.meta`` (see ``_submit``), so the command's
    signature stays."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        start_at: float | None = None,
        limit_rate: int | None = None,
        priority: str | None = None,
        cacert: str | None = None,
        **kwargs: Any,
    ) -> int:
        extra = {
            "start_at": start_at,
            "max_rate": limit_rate,
            "priority": priority,
            "ca_bundle": cacert,
        }
        click.get_current_context().meta[SUBMIT_EXTRA] = {
            k: v for k, v in extra.items() if v is not None
        }
        return fn(*args, **kwargs)

    for opt in reversed(_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper
