"""Backoff: exponential with jitter, never sleeping itself."""

from __future__ import annotations

from dataclasses import dataclass

from bgtransfer._protocol._defaults import MAX_RETRY_WAIT, RETRY_WAIT

__all__ = ["RETRYABLE_STATUS", "Backoff"]

# curl's --retry list plus Cloudflare's 522/524, which are as transient as 502/504.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 522, 524})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``failures`` (1-based): base * 2**(n-1), capped.

    ``jitter`` in [0, 1) comes from the caller's random source. Equal jitter keeps at least
    half the delay, so a herd of tasks failing together spreads out without retrying at once.
    """

    base: float = RETRY_WAIT
    cap: float = MAX_RETRY_WAIT

    def delay(self, failures: int, jitter: float) -> float:
        n = max(1, failures)
        raw = min(self.cap, self.base * (2.0 ** min(n - 1, 32)))
        return raw * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
