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
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bgtransfer import __version__
from bgtransfer._daemon._paths import daemon_lock, socket_path
from bgtransfer._daemon._stream import (
    REPLAY_LIMIT,
    EventLines,
    acknowledge,
    kinds_of,
    phases_of,
)
from bgtransfer._engine import _forget as forget
from bgtransfer._engine._engine import Engine
from bgtransfer._exceptions import (
    DestinationError,
    InvalidRequest,
    InvalidTransition,
    StoreFull,
    TaskNotFound,
    TransferError,
)
from bgtransfer._models import PHASE_STATE, TaskState
from bgtransfer._redact import redact
from bgtransfer._store._base import TaskRow
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import (
    DOWNLOAD_OPTIONS,
    UPLOAD_OPTIONS,
    build_row,
    build_upload_row,
    check_key,
    row_to_wire,
    same_request,
    same_target,
)

__all__ = ["STORE_NAME", "main"]

log = logging.getLogger("bgtransfer.daemon")

STORE_NAME = "bgtransfer.sqlite3"
MAX_BODY = 1 << 20
HOOK_TIMEOUT = 60.0

_STATUS: list[tuple[type[TransferError], int]] = [
    (StoreFull, 507),  # the home's disk is full: nothing can be committed
    (InvalidRequest, 400),
    (TaskNotFound, 404),
    (InvalidTransition, 409),
    (DestinationError, 409),
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
    body = {"error": {"code": code, "message": redact(message)}}
    return web.json_response(body, status=status)


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Defence in depth behind the socket's 0600 mode: some systems ignore socket permissions.
    if _peer_uid(request) != os.geteuid():
        return _error(403, "forbidden", "only the daemon's own user may use this socket")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except TransferError as exc:
        return _error(_http_status(exc), exc.code, exc.message)
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, "bad_request", f"malformed request: {exc}")


class Daemon:
    def __init__(self, home: str) -> None:
        self.home = home
        self.socket = socket_path(home)
        self.store = SQLiteStore(os.path.join(home, STORE_NAME))
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

    # -- hooks -----------------------------------------------------------------------------

    def _on_finished(self, row: TaskRow) -> None:
        if row.on_complete and row.hook_state == "pending":
            task = asyncio.get_running_loop().create_task(self._run_hook(row))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _run_hook(self, row: TaskRow) -> None:
        """Run the completion argv (no shell); output goes to the daemon log."""
        assert row.on_complete is not None
        err = row.snap.error
        env = {
            **os.environ,
            "BGTRANSFER_TASK_ID": row.id,
            "BGTRANSFER_SESSION": row.session,
            "BGTRANSFER_STATE": "succeeded" if err is None else "failed",
            "BGTRANSFER_PATH": row.path,
            "BGTRANSFER_ERROR": "" if err is None else err.message,
        }
        argv = list(row.on_complete)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("task %s: completion hook %s could not start: %s", row.id, argv, exc)
            self.store.set_hook_state(row.id, "failed")
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            log.error("task %s: completion hook killed after %.0f s", row.id, HOOK_TIMEOUT)
        for line in (out or b"").decode(errors="replace").splitlines():
            log.info("task %s hook: %s", row.id[:8], line)
        log.info("task %s: completion hook %s exited %s", row.id, argv, proc.returncode)
        self.store.set_hook_state(row.id, "done" if proc.returncode == 0 else "failed")

    # -- handlers --------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        counts = {s.value: 0 for s in TaskState}
        for phase, n in self.store.counts().items():
            from bgtransfer._models import Phase

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

    def _build(self, body: object, batch: dict[str, TaskRow] | None = None) -> TaskRow | str:
        """A validated new row for one submit item, or the id of its earlier twin (same
        idempotency key in the same session, submitted before or earlier in ``batch``)."""
        if not isinstance(body, dict):
            raise InvalidRequest("a task must be a JSON object")
        upload = body.get("kind", "download") == "upload"
        allowed = UPLOAD_OPTIONS if upload else DOWNLOAD_OPTIONS
        known = {"kind", "session", "url", "path", "idempotency_key", *allowed}
        if not upload:
            known.add("umask")  # the submitting process's: the finished file's mode
        unknown = set(body) - known
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        session, key = body.get("session"), check_key(body.get("idempotency_key"))
        if not isinstance(session, str) or not session:
            raise InvalidRequest(f"session must be a non-empty string: {session!r}")
        path = body.get("path")
        if isinstance(path, str) and not os.path.isabs(path):
            # Resolved here it would name a file under the daemon's working directory.
            raise InvalidRequest(
                f"path must be absolute (the daemon does not know the caller's working "
                f"directory): {path!r}"
            )
        options = {k: body[k] for k in allowed if k in body}
        for pairs in ("headers", "form_fields"):
            if isinstance(options.get(pairs), list):
                options[pairs] = [tuple(h) for h in options[pairs]]
        # The earlier twin is looked up before the target is checked: a repeated submit
        # finds its own finished file there, and gets its task back.
        existing = None
        if key is not None:
            existing = (batch or {}).get(key) or self.store.find_key(session, key)
        try:
            if upload:
                row = build_upload_row(
                    session, body.get("path"), body.get("url"), background=True,
                    idempotency_key=key, **options,
                )  # fmt: skip
            else:
                row = build_row(
                    session, body.get("url"), path, background=True, idempotency_key=key,
                    check_exists=existing is None, umask=body.get("umask"), **options,
                )  # fmt: skip
        except InvalidRequest:
            kind = "upload" if upload else "download"
            if existing is not None and same_target(
                existing, kind, body.get("url"), body.get("path")
            ):
                return existing.id
            raise
        if existing is not None:
            same_request(existing, row)
            return existing.id
        if key is not None and batch is not None:
            batch[key] = row
        return row

    async def submit(self, request: web.Request) -> web.Response:
        """One task (an object), or many at once (``{"tasks": [...]}``, one transaction).

        No await between the key lookup and the insert: submits are serialised by the
        event loop, so two clients racing with one key get one task.
        """
        body = await request.json()
        if isinstance(body, dict) and set(body) == {"tasks"}:
            items = body["tasks"]
            if not isinstance(items, list) or not 1 <= len(items) <= 10_000:
                raise InvalidRequest("tasks must be a list of 1 to 10000 task objects")
            batch: dict[str, TaskRow] = {}
            built = [self._build(item, batch) for item in items]  # all validated first
            new = list({b.id: b for b in built if isinstance(b, TaskRow)}.values())
            if new:
                self.engine.submit_many(new)
            ids = [b if isinstance(b, str) else b.id for b in built]
            return web.json_response(
                {"tasks": [row_to_wire(self.engine.get(i)) for i in ids]}, status=201
            )
        built_one = self._build(body)
        if isinstance(built_one, str):
            return web.json_response(row_to_wire(self.engine.get(built_one)))
        self.engine.submit(built_one)
        return web.json_response(row_to_wire(self.engine.get(built_one.id)), status=201)

    async def list_tasks(self, request: web.Request) -> web.Response:
        """All tasks, a page (``limit``, ``offset``), or the ids starting with ``prefix``."""
        q = request.query
        session = q.get("session")
        prefix = q.get("prefix")
        if q.get("key") is not None and session is not None:
            twin = self.store.find_key(session, q["key"])
            rows = [] if twin is None else [twin]
        elif prefix is not None:
            rows = [
                r for r in self.store.find_prefix(prefix.lower()) if session in (None, r.session)
            ]
        elif {"state", "since", "after"} & set(q):
            rows = self.store.page(
                session,
                phases=phases_of(q.getall("state", [])),
                since=None if q.get("since") is None else float(q["since"]),
                after=q.get("after"),
                limit=int(q.get("limit", "-1")),
            )
        else:
            limit, offset = int(q.get("limit", "-1")), int(q.get("offset", "0"))
            if limit < -1 or offset < 0:
                raise InvalidRequest("limit and offset must not be negative")
            rows = self.store.list(session, limit=limit, offset=offset)
        return web.json_response([row_to_wire(self.engine.get(r.id)) for r in rows])

    async def get_task(self, request: web.Request) -> web.Response:
        return web.json_response(row_to_wire(self.engine.get(request.match_info["id"])))

    async def control(self, request: web.Request) -> web.Response:
        task_id, verb = request.match_info["id"], request.match_info["verb"]
        if verb == "suspend":
            await self.engine.suspend(task_id)
        elif verb == "resume":
            await self.engine.resume(task_id)
        elif verb == "cancel":
            await self.engine.cancel(task_id)
        elif verb == "ack":
            acknowledge(self.engine, task_id)
        else:
            raise web.HTTPNotFound(text=f"unknown action {verb!r}")
        return web.json_response(row_to_wire(self.engine.get(task_id)))

    async def remove(self, request: web.Request) -> web.Response:
        """Forget a finished task (409 invalid_transition while it runs); its file stays."""
        task_id = request.match_info["id"]
        await forget.remove(self.engine, task_id)
        return web.json_response({"removed": [task_id]})

    async def prune(self, request: web.Request) -> web.Response:
        """``{"older_than": S | null, "session": S | null}``: forget every finished task
        that finished at least S seconds ago (of that session)."""
        body = await request.json()
        if not isinstance(body, dict) or set(body) - {"older_than", "session"}:
            raise InvalidRequest('prune takes {"older_than": seconds, "session": name}')
        older, session = body.get("older_than"), body.get("session")
        if older is not None and (
            not isinstance(older, int | float) or isinstance(older, bool) or older < 0
        ):
            raise InvalidRequest(f"older_than must be a number of seconds >= 0: {older!r}")
        if session is not None and not isinstance(session, str):
            raise InvalidRequest(f"session must be a string: {session!r}")
        before = None if older is None else time.time() - older
        removed = forget.prune(self.engine, before=before, session=session)
        return web.json_response({"removed": removed})

    async def attempts(self, request: web.Request) -> web.Response:
        history = self.engine.attempts(request.match_info["id"])
        for a in history:
            a["url"], a["outcome"] = redact(a["url"] or ""), redact(a["outcome"] or "")
        return web.json_response(history)

    async def wait_many(self, request: web.Request) -> web.Response:
        """``{"ids": [...], "timeout": S}``: answer once every task is completed (committed)
        or S seconds passed, with all their rows: one long poll for a whole batch."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
            raise InvalidRequest('wait needs {"ids": [...], "timeout": seconds}')
        ids = body["ids"]
        if not 1 <= len(ids) <= 10_000 or not all(isinstance(i, str) for i in ids):
            raise InvalidRequest("ids must be a list of 1 to 10000 task ids")
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise InvalidRequest(f"timeout must be a number of seconds: {timeout!r}")
        if not 0 <= timeout <= 300:
            raise InvalidRequest(f"timeout must be between 0 and 300 seconds: {timeout}")
        for task_id in ids:
            self.engine.get(task_id)  # unknown ids: 404 now, not after the wait

        async def every() -> None:
            for task_id in ids:
                await self.engine.wait(task_id)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every(), timeout)
        return web.json_response({"tasks": [row_to_wire(self.engine.get(i)) for i in ids]})

    async def wait(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        timeout = float(request.query.get("timeout", "30"))
        if not 0 <= timeout <= 300:
            raise InvalidRequest(f"timeout must be between 0 and 300 seconds: {timeout}")
        self.engine.get(task_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.engine.wait(task_id), timeout)
        return web.json_response(row_to_wire(self.engine.get(task_id)))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """NDJSON: a replay, a ``replay_end`` line with the cursor where it ended, then live.

        ``since`` absent: the completion of every finished, unacknowledged task; ``since=C``:
        every state event after cursor C except acknowledged completions. ``kinds=state,
        progress`` filters; ``completions=1`` streams only completions, each with its task.
        """
        session = request.query.get("session")
        if not session:
            raise InvalidRequest("events need a session")
        since_raw = request.query.get("since")
        follow = request.query.get("follow", "1") != "0"
        only_done = request.query.get("completions", "0") == "1"
        kinds = kinds_of(request.query.get("kinds"))
        since = None if since_raw is None else int(since_raw)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue = self.engine.subscribe()
        lines = EventLines(self.engine, with_task=only_done)
        try:
            last = self.store.last_cursor()  # read before the replay: nothing falls between
            if since is None or only_done:
                # Replay what an app that was away must learn: unacknowledged completions.
                replay = self.store.unacknowledged_completions(session)
            else:
                replay = self.store.events_since(session, since, limit=REPLAY_LIMIT)
                if len(replay) == REPLAY_LIMIT:  # the rest comes after a reconnect
                    last = replay[-1].cursor
            for ev in replay:
                last = max(last, ev.cursor)
                if "state" in kinds:
                    await resp.write(lines.stored(ev))
            await resp.write(json.dumps({"kind": "replay_end", "cursor": last}).encode() + b"\n")
            while follow and not self.stopping.is_set():
                try:
                    live = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    await resp.write(b"\n")  # keep-alive; also detects a gone client
                    continue
                if live.session != session:
                    continue
                if live.cursor is not None and live.cursor <= last:
                    continue
                if live.cursor is not None:
                    last = live.cursor
                if live.kind not in kinds or (only_done and live.state is not TaskState.COMPLETED):
                    continue
                await resp.write(lines.live(live))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.engine.unsubscribe(queue)
        return resp

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True})

    # -- lifecycle -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_guard])
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/tasks", self.submit)
        app.router.add_get("/v1/tasks", self.list_tasks)
        app.router.add_get("/v1/tasks/{id}", self.get_task)
        app.router.add_delete("/v1/tasks/{id}", self.remove)
        app.router.add_post("/v1/prune", self.prune)
        app.router.add_get("/v1/tasks/{id}/wait", self.wait)
        app.router.add_post("/v1/wait", self.wait_many)
        app.router.add_get("/v1/tasks/{id}/attempts", self.attempts)
        app.router.add_post("/v1/tasks/{id}/{verb}", self.control)
        app.router.add_get("/v1/events", self.events)
        app.router.add_post("/v1/shutdown", self.shutdown)
        return app

    async def run(self) -> None:
        await self.engine.start()
        self.engine.recover_background()
        await self.engine.flush()
        for row in self.store.pending_hooks():
            self._on_finished(row)
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # stale: we hold the lock, so no daemon owns it
        old = os.umask(0o177)
        try:
            site = web.UnixSite(runner, self.socket)
            await site.start()
        finally:
            os.umask(old)
        os.chmod(self.socket, 0o600)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("daemon %d serving %s for home %s", os.getpid(), self.socket, self.home)
        try:
            await self.stopping.wait()
        finally:
            t0 = time.monotonic()
            await self.engine.close()
            await runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
            for hook in list(self._hooks):
                hook.cancel()
            self.store.close()
            log.info("daemon stopped in %.2f s", time.monotonic() - t0)


class _RedactingFormatter(logging.Formatter):
    """The daemon log never shows a password of a URL (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _take_lock(home: str) -> int | None:
    fd = os.open(daemon_lock(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def main(home: str) -> int:
    """``bgtransfer daemon run``: serve until SIGTERM; 0 also when one already runs."""
    from bgtransfer._session import resolve_home

    home = resolve_home(home)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    lock = _take_lock(home)
    if lock is None:
        print(f"bgtransfer: the daemon for {home} is already running", file=sys.stderr)
        return 0
    try:
        asyncio.run(Daemon(home).run())
    finally:
        os.close(lock)
    return 0
