"""When a failed attempt is the last one: the give-up rules, as pure functions.

The machine asks them in order after a failure it could retry: the attempts are exhausted
(the low-speed rule, ``max_attempts``), then the wait is bounded (``retry_for``, the
resource timeout, a Retry-After beyond it). A rule that gives up says why in the error's
message, which is what the caller reads.
"""

from __future__ import annotations

from bgtransfer._exceptions import HTTPStatusError, NetworkError, TransferError, TransferTimeout
from bgtransfer._protocol._defaults import MAX_SLOW_ATTEMPTS
from bgtransfer._protocol._retry import RETRYABLE_STATUS
from bgtransfer._protocol._task import Spec

__all__ = ["exhausted", "resource_timeout", "retryable", "wait_or_give_up"]


def retryable(err: TransferError) -> bool:
    """A failure another attempt may fix: the network, a timeout, a status that says so."""
    return isinstance(err, NetworkError | TransferTimeout) or (
        isinstance(err, HTTPStatusError) and err.status_code in RETRYABLE_STATUS
    )


def resource_timeout(limit: float, last: TransferError | None) -> TransferTimeout:
    msg = f"resource timeout of {limit:g} s reached"
    if last is not None:
        msg += f"; last error: {last.message}"
    return TransferTimeout(msg)


def exhausted(
    spec: Spec, err: TransferError, *, attempts: int, failures: int, slow: bool
) -> TransferError | None:
    """``err``, annotated, when no attempt may follow; None while attempts remain."""
    if slow and failures >= MAX_SLOW_ATTEMPTS:
        return _say(
            err,
            f"{err.message}, {failures} attempts in a row; not retried "
            "(low_speed_limit=0 turns the low-speed rule off)",
        )
    if spec.max_attempts is not None and attempts >= spec.max_attempts:
        return _say(err, f"{err.message} (gave up after {attempts} attempts)")
    return None


def wait_or_give_up(
    spec: Spec,
    err: TransferError,
    *,
    delay: float,
    attempts: int,
    failing: float,
    left: float,
    retry_after: float | None,
) -> float | TransferError:
    """The wait before the next attempt, or the error to fail with.

    ``failing``: active seconds since the first failure of this run (with ``retry_for``);
    ``left``: what remains of the resource timeout.
    """
    if spec.retry_for is not None:
        if failing >= spec.retry_for:
            return _say(
                err,
                f"{err.message} (gave up after {attempts} attempts in "
                f"{failing:.0f} s without a byte: retry_for is {spec.retry_for:g} s)",
            )
        delay = min(delay, spec.retry_for - failing)  # the last try at the deadline
    if delay >= left:
        if retry_after is not None and isinstance(err, HTTPStatusError):
            return _say(
                err,
                f"{err.message} with Retry-After {retry_after:.0f} s, beyond the "
                f"{max(left, 0):.0f} s left of resource_timeout; not retried",
            )
        return resource_timeout(spec.resource_timeout, err)
    return delay


def _say(err: TransferError, message: str) -> TransferError:
    # The machine owns the error it was handed (drivers pass a fresh one per failure).
    err.message = message
    err.args = (message,)
    return err
