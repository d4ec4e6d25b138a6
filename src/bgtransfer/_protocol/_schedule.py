"""When and how fast: priorities, token buckets, job periods and origin cool-downs, sans I/O.

Nothing here reads a clock or draws a random number: callers pass ``now`` and a ``jitter``
in [0, 1) from their own random source, so every rule is a plain function of its inputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_JITTER",
    "PRIORITIES",
    "CoolDowns",
    "TokenBucket",
    "job_jitter",
    "next_run",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "priority_rank",
]

# Queued work starts in this order (BITS' foreground/high/normal/low, minus foreground).
PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kmgt]?)(?:i?b?(?:/s)?)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def priority_rank(name: str) -> int:
    try:
        return PRIORITIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"priority must be one of 'high', 'normal', 'low', not {name!r}") from None


def parse_size(text: str) -> int:
    """curl's ``--max-filesize`` syntax: whole bytes, suffixes k/M/G/T are powers of 1024
    ("10M"); no fractions (a size is counted, not measured). Raises ValueError."""
    t = text.strip()
    digits = t.rstrip("kKmMgGtT")
    unit = t[len(digits) :].lower()
    if not digits.isascii() or not digits.isdigit() or len(digits) > 15 or len(unit) > 1:
        raise ValueError(f"{text!r} is not a size (digits, then k, M, G or T)")
    return int(digits) * _UNITS[unit]


def parse_rate(text: str) -> int:
    """curl's ``--limit-rate`` syntax: bytes per second, suffixes k/M/G/T are powers of 1024
    ("4M" is 4 MiB/s); "1.5M" works, so does "512K/s". Raises ValueError."""
    m = _RATE.match(text.strip())
    if m is None:
        raise ValueError(f"not a rate: {text!r} (examples: 500K, 4M, 1.5G, 100000)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not 1 <= value < 1 << 53:
        raise ValueError(f"rate out of range: {text!r} (at least 1 byte per second)")
    return int(value)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d``, ``1w``: seconds. Raises ValueError."""
    s = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()]
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    if not s or pos != len(s):
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 1h, 1h30m, 2d)")
    return total


@dataclass(slots=True)
class TokenBucket:
    """``rate`` bytes per second with ``burst`` bytes of slack.

    Bytes are taken after they were read (the socket already gave them), so the bucket may
    go into debt; :meth:`take` returns how long to pause so the average stays at ``rate``.
    A transfer measured from first to last byte then takes ``(size - burst) / rate``.
    """

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    @classmethod
    def for_rate(cls, rate: float) -> TokenBucket:
        # A tenth of a second of slack: small enough that a whole transfer keeps the rate
        # (12 MiB at 4 MiB/s: 2.9 s, not 2 s), large enough for one read of a fast link.
        return cls(rate=rate, burst=max(rate / 10.0, 1.0))

    def _refill(self, now: float) -> None:
        if self.stamp is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: int, now: float) -> float:
        """Account ``n`` bytes at ``now``; returns the seconds to wait before the next read."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate at run time; debt is kept (it was real traffic), slack rescaled."""
        self._refill(now)
        self.rate = rate
        self.burst = max(rate / 10.0, 1.0)
        self.tokens = min(self.tokens, self.burst)


# -- background fetch jobs ------------------------------------------------------------------

# Runs fire up to 10 % of the period after their nominal time, never more than 30 s late:
# enough to spread a herd of jobs with the same period, small next to any period.
JITTER_FRACTION = 0.1
MAX_JITTER = 30.0


def job_jitter(every: float, jitter: float) -> float:
    return min(max(jitter, 0.0), 1.0) * min(every * JITTER_FRACTION, MAX_JITTER)


def next_run(anchor: float, every: float, now: float, jitter: float) -> float:
    """The time of the next run after a run (or a check) at ``now``.

    Runs are due at ``anchor + k * every``; the next is the first of those strictly after
    ``now``, so a job that was down for ten periods runs once to catch up (the caller runs
    it at ``now``) and then keeps its grid, instead of firing ten times. Jitter is added on
    top and never moves the grid.
    """
    if every <= 0:
        raise ValueError("every must be positive")
    periods = 0 if now < anchor else math.floor((now - anchor) / every) + 1
    nominal = anchor + periods * every
    if nominal <= now:  # float rounding put the grid point on "now": take the next one
        nominal = anchor + (periods + 1) * every
    return nominal + job_jitter(every, jitter)


# -- politeness -----------------------------------------------------------------------------

# 429 without a Retry-After: the origin's own backoff, doubling per 429 in a row.
COOL_BASE = 1.0
COOL_CAP = 300.0
# The longest an origin is shut for all tasks on its word: a Retry-After of a week (or an
# unparsably large one, read as infinite) fails the task that got it, not the origin forever.
MAX_ORIGIN_WAIT = 3600.0


@dataclass(slots=True)
class _Origin:
    until: float = 0.0
    strikes: int = 0
    reason: str = ""


@dataclass(slots=True)
class CoolDowns:
    """Per-origin "do not send before" times, from 429 and 503 answers.

    * A 429 or 503 with Retry-After cools the whole origin down until then.
    * Each 429 in a row (no success between) is a strike; the origin then waits at least
      ``COOL_BASE * 2**(strikes-1)`` (capped at ``COOL_CAP``), Retry-After or not, so a
      server that keeps saying "slow down" gets an ever slower client.
    * A 503 without Retry-After is one task's transient failure: the task retries alone.
    * Any other answer from the origin clears its strikes.
    * No origin is shut for longer than ``MAX_ORIGIN_WAIT`` at a time.

    Times are the caller's clock (monotonic); the engine converts for display.
    """

    origins: dict[str, _Origin] = field(default_factory=dict)

    def on_response(
        self, origin: str, status: int, retry_after: float | None, now: float
    ) -> float | None:
        """Record an answer; returns the new "not before" time when the origin cools down."""
        if status not in (429, 503):
            o = self.origins.get(origin)
            if o is not None:
                o.strikes = 0
                if o.until <= now:
                    del self.origins[origin]
            return None
        o = self.origins.setdefault(origin, _Origin())
        wait = retry_after if retry_after is not None else None
        if status == 429:
            o.strikes += 1
            backoff = min(COOL_CAP, COOL_BASE * 2.0 ** min(o.strikes - 1, 30))
            wait = backoff if wait is None else max(wait, backoff)
        if wait is None:
            return None
        until = now + min(wait, MAX_ORIGIN_WAIT)
        if until > o.until:
            o.until = until
            o.reason = f"{status}"
        return o.until

    def not_before(self, origin: str, now: float) -> float:
        """0.0 when the origin may be asked now, else the time it may be asked again."""
        o = self.origins.get(origin)
        if o is None or o.until <= now:
            return 0.0
        return o.until

    def reason(self, origin: str) -> str:
        o = self.origins.get(origin)
        return "" if o is None else o.reason

    def restore(self, origin: str, until: float, reason: str) -> None:
        """A cool-down remembered from before a restart (no strikes: those were in memory)."""
        o = self.origins.setdefault(origin, _Origin())
        if until > o.until:
            o.until, o.reason = until, reason
