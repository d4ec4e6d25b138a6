"""Completion hooks: the argv a task names, run by the daemon when the task completes.

A hook runs in a process group of its own with a small, documented environment (not the
daemon's: that may hold the secrets of the shell that started it), stdin closed, and its
output appended to the daemon's log through an inherited descriptor, never a pipe: a
grandchild that keeps the descriptor open cannot block the daemon. On timeout the whole group
is killed and the hook is recorded as ``timeout``, so it is not run again on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from bgtransfer._store._base import TaskRow

__all__ = ["HOOK_ENV_KEEP", "hook_env", "run_hook"]

log = logging.getLogger("bgtransfer.daemon")

# Taken from the daemon's environment when set: where programs are, who the user is, the
# locale, and how to reach the user's desktop session (notify-send needs the last four).
HOOK_ENV_KEEP = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
)


def hook_env(row: TaskRow) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in HOOK_ENV_KEEP or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    err = row.snap.error
    env.update(
        {
            "BGTRANSFER_TASK_ID": row.id,
            "BGTRANSFER_SESSION": row.session,
            "BGTRANSFER_STATE": "succeeded" if err is None else "failed",
            "BGTRANSFER_PATH": row.path,
            "BGTRANSFER_ERROR": "" if err is None else err.message,
        }
    )
    return env


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_hook(row: TaskRow, timeout: float) -> str:
    """Run the task's hook; the state to record: ``done``, ``failed`` or ``timeout``.

    Cancelled (the daemon stops): the group is killed and nothing is recorded, so the hook
    runs again on the next start (at least once).
    """
    assert row.on_complete is not None
    argv = list(row.on_complete)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=hook_env(row),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=2,  # the daemon's log (or its terminal under `daemon run`)
            stderr=2,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("task %s: completion hook %s could not start: %s", row.id, argv, exc)
        return "failed"
    log.info("task %s: completion hook %s started, pid %d", row.id, argv, proc.pid)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        log.error(
            "task %s: completion hook %s timed out after %g s; its process group was killed",
            row.id,
            argv,
            timeout,
        )
        return "timeout"
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    log.info("task %s: completion hook %s exited %s", row.id, argv, proc.returncode)
    return "done" if proc.returncode == 0 else "failed"
