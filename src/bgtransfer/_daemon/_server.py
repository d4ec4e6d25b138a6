"""The daemon process: one per home, the engine for background sessions, HTTP+JSON on a socket.

Control protocol (all under ``/v1``, JSON bodies, errors as ``{"error": {code, message}}``):

=======  ===============================  ==================================================
GET      /v1/status                       running, pid, socket, home, version, task counts
POST     /v1/tasks                        submit a download or upload (body: session, url, path,
                                          options…, idempotency_key); 201, or 200 with the
                                          existing task when the key was seen before
GET      /v1/tasks?session=S              list tasks (all sessions without ``session``);
                                          ``limit``/``offset`` page, ``prefix`` finds ids;
                                          ``state`` (repeatable), ``since`` (created at or
                                          after, epoch s), ``after`` (last id of the page
                                          before) page by index; ``key`` finds the
                                          session's task of an idempotency key
GET      /v1/tasks/{id}                   one task
DELETE   /v1/tasks/{id}                   forget a finished task (its file stays)
POST     /v1/prune                        forget finished tasks (``older_than`` seconds)
POST     /v1/tasks/{id}/suspend|resume|cancel|ack
GET      /v1/tasks/{id}/wait?timeout=S    long poll until COMPLETED or S seconds
GET      /v1/tasks/{id}/attempts          the history: every request and what came of it
GET      /v1/events?session=S[&since=C]   NDJSON: replay, ``replay_end`` with its cursor,
                                          then follow; ``kinds``, ``completions=1``
POST     /v1/shutdown                     graceful stop (tasks checkpointed, resumed on start)
=======  ===============================  ==================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sqlite3
import stat
import struct
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bgtransfer._daemon._context import STOPPED_MESSAGE, Parts
from bgtransfer._daemon._event_routes import events
from bgtransfer._daemon._hooks import run_hook
from bgtransfer._daemon._lock import clear_stopped, mark_stopped, take_lock
from bgtransfer._daemon._paths import daemon_lock, socket_path
from bgtransfer._daemon._scheduling import add_routes as add_scheduling_routes
from bgtransfer._daemon._task_routes import TaskRoutes
from bgtransfer._daemon._watch import WATCH_INTERVAL, HomeWatch
from bgtransfer._daemon._wire import (
    HEADER_TIMEOUT,
    MAX_BODY,
    error_response,
    http_error_code,
)
from bgtransfer._engine._engine import Engine
from bgtransfer._engine._jobs import JobRunner
from bgtransfer._exceptions import (
    DaemonStopped,
    DestinationError,
    InvalidRequest,
    InvalidTransition,
    StoreFull,
    TaskNotFound,
    TransferError,
    UnsafeHome,
)
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._redact import redact
from bgtransfer._store._base import Store, TaskRow
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._trust import prepare_home
from bgtransfer._version import __version__

__all__ = ["STORE_NAME", "main"]

log = logging.getLogger("bgtransfer.daemon")

STORE_NAME = "bgtransfer.sqlite3"
HOOK_TIMEOUT = 60.0
# Live events a subscriber may lag behind before it is dropped; it reconnects from its cursor
# and the store replays the state events it missed (progress is not replayed). Twice the
# largest batch submit, whose "queued" events arrive in one burst; at most ~10 MB.
EVENT_QUEUE = 20_000
FAILED_PREFIX = "bgtransfer: daemon failed: "

_STATUS: list[tuple[type[TransferError], int]] = [
    (StoreFull, 507),  # the home's disk is full: nothing can be committed
    (InvalidRequest, 400),
    (TaskNotFound, 404),
    (InvalidTransition, 409),
    (DestinationError, 409),
    (DaemonStopped, 503),
]


def _http_status(exc: TransferError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _env_int(name: str, default: int) -> int:
    """A positive integer setting from the daemon's environment (bad values: the default)."""
    raw = os.environ.get(name, "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    if raw:
        log.warning("ignoring %s=%r: not a positive integer", name, raw)
    return default


def _error(status: int, code: str, message: str) -> web.Response:
    return error_response(status, code, redact(message))


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404 and exc.text == "404: Not Found":
        return f"no such endpoint: {request.method} {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return f"request too large: the daemon takes at most {MAX_BODY} bytes"
    return exc.text or exc.reason


class Daemon:
    def __init__(self, home: str) -> None:
        self.home = home
        self.socket = socket_path(home)
        self.store: Store = SQLiteStore(os.path.join(home, STORE_NAME))
        self.engine = Engine(
            self.store,
            home,
            background=True,
            on_finished=self._on_finished,
            max_active=_env_int("BGTRANSFER_MAX_ACTIVE", 16),
            max_per_host=_env_int("BGTRANSFER_MAX_PER_HOST", 6),
        )
        self.stopping = asyncio.Event()
        self._hooks: set[asyncio.Task[None]] = set()
        self.hook_timeout = float(_env_int("BGTRANSFER_HOOK_TIMEOUT", int(HOOK_TIMEOUT)))
        self.event_queue = _env_int("BGTRANSFER_EVENT_QUEUE", EVENT_QUEUE)
        self.jobs = JobRunner(self.engine)
        self.parts = Parts(
            home=home,
            store=self.store,
            engine=self.engine,
            jobs=self.jobs,
            stopping=self.stopping,
            event_queue=self.event_queue,
        )
        self.tasks = TaskRoutes(self.parts)

    # -- every request ---------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Peer check, then the handler, with every error answered as JSON."""
        # Defence in depth behind the socket's 0600 mode: some systems ignore socket modes.
        if _peer_uid(request) != os.geteuid():
            return _error(403, "forbidden", "only the daemon's own user may use this socket")
        if self.stopping.is_set() and request.path != "/v1/shutdown":
            return _error(503, DaemonStopped.code, STOPPED_MESSAGE)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(
                exc.status, http_error_code(exc.status), _http_message(request, exc), allow
            )
        except TransferError as exc:
            return _error(_http_status(exc), exc.code, exc.message)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "bad_request", f"malformed request: {exc}")
        except RecursionError:
            return _error(400, "bad_request", "the request is nested too deeply")
        except Exception as exc:
            log.exception("internal error answering %s %s", request.method, request.path)
            return _error(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")

    # -- hooks -----------------------------------------------------------------------------

    def _on_finished(self, row: TaskRow) -> None:
        self.tasks.finished(row)  # its completion is committed: waiters answer now
        self.jobs.finished(row)
        if row.on_complete and row.hook_state == "pending":
            task = asyncio.get_running_loop().create_task(self._run_hook(row))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _run_hook(self, row: TaskRow) -> None:
        """Run the completion argv (no shell); see _hooks for the rules."""
        self.store.set_hook_state(row.id, await run_hook(row, self.hook_timeout))

    # -- handlers --------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        counts = {s.value: 0 for s in TaskState}
        for phase, n in self.store.counts().items():
            counts[PHASE_STATE[Phase(phase)].value] += n
        return web.json_response(
            {
                "running": True,
                "pid": os.getpid(),
                "socket": self.socket,
                "home": self.home,
                "version": __version__,
                "tasks": counts,
                "limits": {
                    "max_active": self.engine.limiter.total,
                    "max_per_host": self.engine.limiter.per_host,
                },
            }
        )

    async def shutdown(self, request: web.Request) -> web.Response:
        self.request_stop()
        return web.json_response({"stopping": True})

    def request_stop(self) -> None:
        """A stop asked for (``daemon stop``, SIGTERM, SIGINT). Recorded before anything else:
        a client that followed this daemon then ends instead of starting another one."""
        if not self.stopping.is_set():
            mark_stopped(self.home)
            self.stopping.set()

    # -- lifecycle -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_get("/v1/status", self.status)
        self.tasks.add_routes(app)
        app.router.add_get("/v1/events", functools.partial(events, self.parts))
        app.router.add_post("/v1/shutdown", self.shutdown)
        add_scheduling_routes(app, self.parts)
        return app

    async def _watch(self, watch: HomeWatch) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL)
            why = None if self.stopping.is_set() else watch.problem()
            if why is not None:
                log.error("stopping: %s", why)
                self.stopping.set()  # not request_stop: followers may start a new daemon

    async def run(self, lock_fd: int) -> None:
        watch = HomeWatch(self.home, lock_fd, daemon_lock(self.home))
        _remove_stale_socket(self.socket)  # we hold the lock, so no daemon owns it
        loop = asyncio.get_running_loop()
        runner: web.AppRunner | None = None
        watcher: asyncio.Task[None] | None = None
        await self.engine.start()
        try:
            self.engine.recover_background()
            await self.engine.flush()
            for row in self.store.pending_hooks():
                self._on_finished(row)
            self.jobs.start()
            runner = web.AppRunner(
                self.app(),
                handle_signals=False,
                access_log=None,
                keepalive_timeout=_env_int("BGTRANSFER_HEADER_TIMEOUT", int(HEADER_TIMEOUT)),
                shutdown_timeout=1.0,
            )
            await runner.setup()
            old = os.umask(0o177)
            try:
                site = web.UnixSite(runner, self.socket)
                await site.start()
            finally:
                os.umask(old)
            os.chmod(self.socket, 0o600)
            watch.bound(self.socket)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            watcher = loop.create_task(self._watch(watch))
            log.info("daemon %d serving %s for home %s", os.getpid(), self.socket, self.home)
            await self.stopping.wait()
        finally:
            t0 = time.monotonic()
            if watcher is not None:
                watcher.cancel()
            await self.jobs.stop()
            await self.engine.close()
            if runner is not None:
                await runner.cleanup()
            if watch.owns_socket():  # never another daemon's socket on a replaced home
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket)
            hooks = list(self._hooks)
            for hook in hooks:
                hook.cancel()
            await asyncio.gather(*hooks, return_exceptions=True)
            self.store.close()
            log.info("daemon stopped in %.2f s", time.monotonic() - t0)


class _RedactingFormatter(logging.Formatter):
    """The daemon log never shows a password of a URL (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket left by a daemon that died, refusing to remove anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise UnsafeHome(f"refusing to replace {path}: it is not a socket of this user")
    os.unlink(path)


def main(home: str) -> int:
    """``bgtransfer daemon run``: serve until SIGTERM; 0 also when one already runs.

    A daemon that cannot start (a corrupt store, a read-only home) ends with exit status 1
    and one line on stderr that says why: the last line of the log a client quotes.
    """
    # The caller (``bgtransfer daemon run``) resolved the home; it is checked again here,
    # the daemon's own precondition (not through the public API: the daemon is below it).
    home = os.path.abspath(os.path.expanduser(home))
    prepare_home(home)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        lock = take_lock(home)
    except (OSError, TransferError) as exc:
        return _failed(home, exc)
    if lock is None:
        print(f"bgtransfer: the daemon for {home} is already running", file=sys.stderr)
        return 0
    try:
        clear_stopped(home)
        asyncio.run(Daemon(home).run(lock))
    except (OSError, TransferError, sqlite3.Error) as exc:
        return _failed(home, exc)
    finally:
        os.close(lock)
    return 0


def _failed(home: str, exc: BaseException) -> int:
    log.error("the daemon for %s failed", home, exc_info=exc)
    reason = exc.message if isinstance(exc, TransferError) else str(exc)
    # The last line of the log: a client that started this daemon quotes it.
    print(f"{FAILED_PREFIX}{redact(reason)}", file=sys.stderr, flush=True)
    return 1
