"""The sessions behind HttpRequest objects, and the option values they accept."""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - see close_sessions' registration
import logging
import threading

import bgtransfer
from bgtransfer.voltmx._errors import VoltMXError, bad_type

__all__ = [
    "DEFAULT_SESSION",
    "NO_LIMIT",
    "OPTIONS",
    "close_sessions",
    "seconds",
    "session",
    "warn_option",
]

DEFAULT_SESSION = "com.bgtransfer.voltmx"
NO_LIMIT = 100 * 365 * 86400.0  # "0 means no limit" (Android): a century stands in for it
OPTIONS = frozenset(
    {"timeoutIntervalForRequest", "timeoutIntervalForResource", "sessionIdentifier"}
)
log = logging.getLogger("bgtransfer.voltmx")
_warned: set[str] = set()

_sessions: dict[tuple[str, str, bool], bgtransfer.Session] = {}
_sessions_lock = threading.Lock()


def session(identifier: str, home: str | None, background: bool) -> bgtransfer.Session:
    resolved = bgtransfer.resolve_home(home)
    key = (identifier, resolved, background)
    with _sessions_lock:
        s = _sessions.get(key)
        if s is None:
            s = bgtransfer.Session(identifier, home=resolved, background=background)
            _sessions[key] = s
        return s


def close_sessions() -> None:
    # Foreground requests stop with the process (resumable later); background ones go on.
    with _sessions_lock:
        for s in _sessions.values():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
        _sessions.clear()


# Closing an engine hands work to an executor, which plain atexit handlers can no longer
# create: run with threading's exit hooks instead, ahead of concurrent.futures' own (hooks
# run last-registered first, hence the early import), when the interpreter has them.
getattr(threading, "_register_atexit", atexit.register)(close_sessions)


def seconds(name: str, value: object) -> float:
    """A timeout in seconds; 0 means no limit (as on Android)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_type(f"{name} must be a number of seconds", value)
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise VoltMXError(100, f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return float(value) if value > 0 else NO_LIMIT


def warn_option(key: str) -> None:
    """Real apps pass more options (kony_sdk.js: enableBackgroundTransfer): say so once."""
    if key not in _warned:
        _warned.add(key)
        log.warning("voltmx.net.HttpRequest: ignoring unknown option %r", key)
