"""Refresh hooks (issue 17): ask the caller for a new URL when a signed one expires.

Two kinds of hook give the same answer (:func:`bgtransfer._protocol._signed.parse_refresh_result`):

* a callable (foreground sessions): called with one mapping (``task_id``, ``url``,
  ``status``, ``reason``); it returns ``{"url": ..., "headers": {...}}`` (or just the URL),
  or an awaitable of that. A plain function runs in a thread, so it may block on the
  network (minting a URL is usually an HTTP call).
* an argv (the daemon, ``refresh=[...]`` / ``--refresh-cmd``): run with no shell, stdin
  closed, in a process group of its own, with a small environment (not the daemon's, which
  may hold the secrets of the shell that started it) plus ``BGTRANSFER_TASK_ID``,
  ``BGTRANSFER_URL``, ``BGTRANSFER_STATUS`` and ``BGTRANSFER_REASON``. It prints the same
  object as JSON (or one URL) on stdout. Its output is bounded, its run time too (the group
  is killed); a non-zero exit, a timeout or a bad answer is a :class:`RefreshFailed` that
  quotes the tail of its stderr.

The same rules as the completion hooks of ``_daemon/_hooks.py``; they live here because the
engine runs the refresh (the daemon only ever runs hooks once a task is finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from bgtransfer._exceptions import InvalidRequest, RefreshFailed
from bgtransfer._protocol._signed import Refresh, parse_refresh_output, parse_refresh_result
from bgtransfer._protocol._validate import check_url

__all__ = [
    "REFRESH_TIMEOUT",
    "RefreshHook",
    "call_hook",
    "refresh_env",
    "run_command",
]

RefreshHook = Callable[[Mapping[str, Any]], Any]

# A URL is minted in well under a second; a minute covers a slow SSO round trip.
REFRESH_TIMEOUT = 60.0
_MAX_STDOUT = 64 * 1024 + 1  # one more than the parser accepts, so "too long" is seen
_STDERR_TAIL = 2000  # characters of stderr quoted in the error
_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "XDG_RUNTIME_DIR")


def _as_refresh(answer: object) -> Refresh:
    if isinstance(answer, str):
        return Refresh(check_url(answer))
    return parse_refresh_result(answer)


async def call_hook(
    hook: RefreshHook, info: Mapping[str, Any], timeout: float = REFRESH_TIMEOUT
) -> Refresh:
    """Call a foreground session's refresh callable; RefreshFailed says why it gave nothing."""
    try:
        async with asyncio.timeout(timeout):
            if inspect.iscoroutinefunction(hook):
                answer = await hook(info)
            else:
                answer = await asyncio.to_thread(hook, info)
                if inspect.isawaitable(answer):
                    answer = await _awaited(answer)
    except TimeoutError:
        raise RefreshFailed(f"the refresh hook gave no answer within {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - the caller's code: any error is its failure
        raise RefreshFailed(f"the refresh hook raised {type(exc).__name__}: {exc}") from None
    try:
        return _as_refresh(answer)
    except InvalidRequest as exc:
        raise RefreshFailed(f"the refresh hook's answer is not usable: {exc.message}") from None


async def _awaited(answer: Awaitable[Any]) -> Any:
    return await answer


def refresh_env(info: Mapping[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    status = info.get("status")
    env.update(
        {
            "BGTRANSFER_TASK_ID": str(info.get("task_id", "")),
            "BGTRANSFER_URL": str(info.get("url", "")),
            "BGTRANSFER_STATUS": "" if status is None else str(status),
            "BGTRANSFER_REASON": str(info.get("reason", "")),
        }
    )
    return env


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int, *, tail: bool) -> bytes:
    """At most ``limit`` bytes of a pipe (its start, or its end with ``tail``), read to EOF
    so the child never blocks on a full pipe."""
    if stream is None:
        return b""
    kept = b""
    while chunk := await stream.read(64 * 1024):
        kept = (kept + chunk)[-limit:] if tail else kept + chunk[: max(0, limit - len(kept))]
    return kept


def _stderr_tail(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return f"; its stderr ends: {text[-_STDERR_TAIL:]}" if text else ""


async def run_command(
    argv: Sequence[str], info: Mapping[str, Any], timeout: float = REFRESH_TIMEOUT
) -> Refresh:
    """Run a refresh command and read its answer; RefreshFailed says why it gave none."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=refresh_env(info),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise RefreshFailed(f"the refresh command {argv[0]!r} could not start: {exc}") from None
    reads = asyncio.gather(
        _read_bounded(proc.stdout, _MAX_STDOUT, tail=False),
        _read_bounded(proc.stderr, 4 * _STDERR_TAIL, tail=True),
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await reads
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        reads.cancel()
        raise RefreshFailed(
            f"the refresh command {argv[0]!r} did not finish within {timeout:g} s; "
            "its process group was killed"
        ) from None
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        reads.cancel()
        raise
    if code != 0:
        raise RefreshFailed(
            f"the refresh command {argv[0]!r} exited with {code}{_stderr_tail(err)}"
        )
    try:
        return parse_refresh_output(out)
    except InvalidRequest as exc:
        raise RefreshFailed(f"{exc.message}{_stderr_tail(err)}") from None
