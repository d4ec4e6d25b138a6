"""What every transfer command shares: exit codes, one call to the daemon with its errors
turned into exit codes, task lookup by id prefix, and the small formats of a task."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click

from bgtransfer import (
    DaemonStopped,
    DestinationError,
    InvalidRequest,
    InvalidTransition,
    StoreUnavailable,
    TaskNotFound,
    TransferError,
    UnsafeHome,
)
from bgtransfer._client import DaemonUnavailable
from bgtransfer._clients import Client, open_client
from bgtransfer._redact import redact
from bgtransfer.cli._narrate import iso_time

__all__ = [
    "DEFAULT_SESSION",
    "EXIT_DAEMON",
    "EXIT_DETACHED",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_STATE",
    "EXIT_STOPPED",
    "EXIT_SUSPENDED",
    "EXIT_TIMEOUT",
    "CliError",
    "daemon_errors",
    "done_bytes",
    "fail",
    "fancy",
    "handled",
    "human",
    "percent",
    "public",
    "resolve",
    "run",
]

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_NOT_FOUND = 4
EXIT_INVALID = 5
EXIT_DAEMON = 6
# The task's state does not allow it: suspend/resume/cancel a completed task, rm a running one.
EXIT_STATE = 8
EXIT_SUSPENDED = 9  # get/wait: the daemon suspended the task (disk full...); resume it later
EXIT_STOPPED = 75  # EX_TEMPFAIL: the daemon was stopped while the command waited; try later
EXIT_DETACHED = 130
DEFAULT_SESSION = "cli"


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def fail(message: str, code: int) -> int:
    click.echo(f"bgtransfer: {redact(message)}", err=True)
    return code


@contextlib.contextmanager
def daemon_errors() -> Iterator[None]:
    """The library's errors as CliError with their exit code: the same whether the daemon
    said it or a check in this process did."""
    try:
        yield
    except (DaemonUnavailable, UnsafeHome, StoreUnavailable) as exc:
        raise CliError(exc.message, EXIT_DAEMON) from None
    except DaemonStopped:
        raise CliError(
            "the daemon was stopped (the transfer is kept: it goes on when the daemon starts "
            "again, e.g. with 'bgtransfer daemon start')",
            EXIT_STOPPED,
        ) from None
    except TaskNotFound as exc:
        raise CliError(exc.message, EXIT_NOT_FOUND) from None
    except (InvalidRequest, DestinationError) as exc:
        # DestinationError at call time: the target belongs to another unfinished task.
        raise CliError(exc.message, EXIT_INVALID) from None
    except InvalidTransition as exc:
        raise CliError(exc.message, EXIT_STATE) from None
    except TransferError as exc:
        raise CliError(exc.message, EXIT_FAILED) from None


def run(home: str, fn: Callable[[Client], Awaitable[T]]) -> T:
    """``fn`` with a client in a new event loop: of the home's daemon (started if need be),
    or, with ``--store postgresql://...`` (fleet mode), of that store, used directly."""
    ctx = click.get_current_context(silent=True)
    store = None if ctx is None else (ctx.find_root().obj or {}).get("store_choice")

    async def go() -> T:
        client = open_client(home, store)
        try:
            return await fn(client)
        finally:
            await client.close()

    with daemon_errors():
        return asyncio.run(go())


def handled(fn: Callable[..., int]) -> Callable[..., int]:
    """Turn CliError into one line on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            return fail(exc.message, exc.code)

    return wrapper


def public(task: dict[str, Any]) -> dict[str, Any]:
    """The task as ``--json`` prints it: no internals, dates in ISO 8601."""
    out = {k: v for k, v in task.items() if k != "internal"}
    for key in ("created_at", "finished_at"):
        if key in out:
            out[key] = iso_time(out[key])
    return out


def fancy() -> bool:
    """Bars and colour only for a person at a terminal."""
    return sys.stdout.isatty() and sys.stderr.isatty() and not os.environ.get("NO_COLOR")


async def resolve(client: Client, prefix: str) -> dict[str, Any]:
    """A task by its id or a unique prefix of it, like git."""
    if not prefix or not all(c in "0123456789abcdefABCDEF" for c in prefix):
        raise CliError(f"no task with id {prefix!r}", EXIT_NOT_FOUND)
    matches = await client.call("GET", "/v1/tasks", params={"prefix": prefix.lower()})
    if not matches:
        raise CliError(f"no task with id {prefix!r}", EXIT_NOT_FOUND)
    if len(matches) > 1:
        ids = ", ".join(t["id"][:12] for t in matches[:5])
        raise CliError(f"id prefix {prefix!r} is ambiguous: {ids}", EXIT_NOT_FOUND)
    return dict(matches[0])


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def done_bytes(task: dict[str, Any]) -> int:
    return int(task["bytes_sent"] if task.get("kind") == "upload" else task["bytes_received"])


def percent(task: dict[str, Any]) -> str:
    total = task["bytes_expected"]
    done = done_bytes(task)
    if not total:
        return human(done)
    return f"{100 * done / total:.0f} %"
