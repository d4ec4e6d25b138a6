"""The daemon's control protocol, answered in this process straight on a PostgreSQL store.

``StoreClient`` offers what ``DaemonClient`` offers (``call``, ``events``, ``ping``,
``ensure_running``, ``close``) with the same requests, the same JSON answers and the same
event lines, so the CLI and the Python API reach a fleet's queue without a fork in their
code and without a local daemon: a submit stores a queued background task that the
workers claim; a wait sleeps on LISTEN until a worker on any host commits its completion.

Store calls run on one thread of the client's own (psycopg's connection is synchronous;
the event loop never waits on the network); the LISTEN connection is asyncio's.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import unquote

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bgtransfer._exceptions import (
    InvalidRequest,
    InvalidTransition,
    StoreError,
    StoreUnavailable,
)
from bgtransfer._home import redact_store_url
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._protocol._origin import origin_key
from bgtransfer._redact import redact
from bgtransfer._requests import (
    BATCH_LIMIT,
    build_item,
    integer,
    kinds_of,
    number,
    phases_of,
    prune_args,
    wait_ids,
    wait_timeout,
)
from bgtransfer._store._base import DuplicateKey, StoredEvent, TaskRow
from bgtransfer._store._pgschema import SCHEMA_VERSION
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._storeclient import _control, _jobs
from bgtransfer._storeclient._limits import limits
from bgtransfer._storeclient._progress import Progress
from bgtransfer._storeclient._wakeups import FALLBACK, Wakeups
from bgtransfer._storeclient._window import Window
from bgtransfer._tasks import row_to_wire

__all__ = ["CONNECT_TIMEOUT", "STATEMENT_TIMEOUT", "StoreClient"]

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # seconds to reach PostgreSQL before StoreUnavailable
# Seconds any one statement may take, a wait for a row lock included: a store that hangs,
# or a worker's transaction that never ends, cannot hold a client call for ever.
STATEMENT_TIMEOUT = 30.0
REPLAY_LIMIT = 100_000  # state events a stream replays at most before it goes live
LIVE_BATCH = 1000  # events read per wake-up of a live stream
META_CACHE = 10_000  # tasks whose metadata a stream remembers

_TASK = re.compile(r"/v1/tasks/([^/]+)")
_TASK_VERB = re.compile(r"/v1/tasks/([^/]+)/([a-z]+)")


class StoreClient:
    """A client of a fleet's PostgreSQL store with the daemon client's interface."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.home = redact_store_url(url)  # where it talks to, as messages name it
        self.peer_pid: int | None = None  # no daemon: nothing to follow
        self.keep_alive = True
        self._timeout = connect_timeout
        self._pg: PostgresStore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._wakeups: Wakeups | None = None

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="bgtransfer-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def _db(self) -> PostgresStore:
        """The store, connected (and its schema created or migrated) on first use."""
        if self._pg is None:
            conninfo = _bounded(self.url)
            self._pg = await self._run(
                lambda: PostgresStore(conninfo, connect_timeout=self._timeout)
            )
        return self._pg

    def _listen(self) -> Wakeups:
        if self._wakeups is None:
            self._wakeups = Wakeups(self.url, connect_timeout=self._timeout)
        return self._wakeups

    async def close(self) -> None:
        """Close the connections (a later call opens new ones)."""
        if self._wakeups is not None:
            wakeups, self._wakeups = self._wakeups, None
            await wakeups.close()
        if self._pg is not None:
            db, self._pg = self._pg, None
            await self._run(db.close)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False)

    async def ping(self) -> dict[str, Any] | None:
        try:
            return await self.ensure_running()
        except StoreUnavailable:
            return None

    async def ensure_running(self) -> dict[str, Any]:
        """Connect (creating or migrating the schema): there is no daemon to start, the
        workers run the tasks. Cheap, unlike ``GET /v1/status``, which counts the tasks."""
        await self._db()
        return {"running": True, "store": self.home, "backend": "postgresql", "pid": None}

    # -- the protocol ----------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
        start: bool = True,
        waiter: bool = False,
        followed: int | None = None,
    ) -> Any:
        """One request of the daemon's protocol, answered from the store (``start``,
        ``waiter`` and ``followed`` concern a daemon and change nothing here).

        A request that finds the connection lost is made once more on a new one, as the
        daemon's client does when the daemon went away: every request is safe to repeat
        (a submit carries its idempotency key, a control call is decided afresh)."""
        async with asyncio.timeout(timeout):
            try:
                return await self._route(method, path, body, params or {})
            except StoreError as exc:
                if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
                    raise StoreUnavailable(
                        f"the task store did not answer within {STATEMENT_TIMEOUT:g} s "
                        f"(a lock held by a transaction that does not end?): {exc.message}"
                    ) from exc
                if self._pg is None or not self._pg.connection_lost():
                    raise
            return await self._route(method, path, body, params or {})

    async def _route(self, method: str, path: str, body: Any, q: dict[str, str]) -> Any:
        if path == "/v1/status" and method == "GET":
            return await self.status()
        if path == "/v1/tasks":
            if method == "POST":
                return await self._submit(body)
            if method == "GET":
                return await self._list(q)
        if path == "/v1/wait" and method == "POST":
            ids, timeout = wait_ids(body)
            return {"tasks": await self._wait_many(ids, timeout)}
        if path == "/v1/prune" and method == "POST":
            before, session = prune_args(body)
            return {"removed": await self._run(_prune, await self._db(), before, session)}
        if path == "/v1/limits":  # the fleet's caps (fleetpace)
            return await self._run(limits, await self._db(), method, body)
        if path == "/v1/jobs" or path.startswith("/v1/jobs/"):
            return await _jobs.answer(await self._db(), self._run, method, path, body, q)
        found = _TASK_VERB.fullmatch(path)
        if found is not None:
            return await self._task_verb(method, unquote(found[1]), found[2], q)
        found = _TASK.fullmatch(path)
        if found is not None:
            task_id = unquote(found[1])
            if method == "GET":
                return await self._show(task_id)
            if method == "DELETE":
                await self._run(_remove, await self._db(), task_id)
                return {"removed": [task_id]}
        raise InvalidRequest(f"no such request: {method} {path}")

    async def _task_verb(self, method: str, task_id: str, verb: str, q: dict[str, str]) -> Any:
        if method == "GET" and verb == "wait":
            timeout = wait_timeout(number(q, "timeout", 30.0))
            return (await self._wait_many([task_id], timeout))[0]
        if method == "GET" and verb == "attempts":
            db = await self._db()
            await self._get(task_id)
            history = [a.to_json() for a in await self._run(db.attempts, task_id)]
            for a in history:
                a["url"], a["outcome"] = redact(a["url"] or ""), redact(a["outcome"] or "")
            return history
        if method == "POST" and verb in ("suspend", "resume", "cancel"):
            db = await self._db()
            row = await _control.control(db, self._run, self._listen(), task_id, verb)
            return row_to_wire(row)
        if method == "POST" and verb == "ack":
            return row_to_wire(await self._run(_acknowledge, await self._db(), task_id))
        raise InvalidRequest(f"no such request: {method} /v1/tasks/{{id}}/{verb}")

    async def _get(self, task_id: str) -> TaskRow:
        return await self._run(_control.get, await self._db(), task_id)

    async def status(self) -> dict[str, Any]:
        db = await self._db()
        now = time.time()
        workers, depth, counts = await self._run(
            lambda: (db.workers(now=now), db.queue_depth(now=now), db.counts())
        )
        by_state: dict[str, int] = {}
        for phase, n in counts.items():
            state = PHASE_STATE[Phase(phase)].value
            by_state[state] = by_state.get(state, 0) + n
        return {
            "running": True,
            "store": self.home,
            "backend": "postgresql",
            "schema_version": SCHEMA_VERSION,
            "pid": None,
            "socket": None,
            "home": None,
            "tasks": by_state,
            "queue_depth": depth,
            "workers": [
                {
                    "name": w.name,
                    "host": w.host,
                    "pid": w.pid,
                    "started_at": w.started_at,
                    "last_seen": w.last_seen,
                    "seen_ago": round(max(0.0, now - w.last_seen), 3),
                    "state": w.state(now),  # alive, or stale: not heard of within its lease
                    "tasks_held": w.held,
                }
                for w in workers
            ],
        }

    # -- submit, list ----------------------------------------------------------------------

    async def _submit(self, body: Any) -> Any:
        db = await self._db()
        if isinstance(body, dict) and set(body) == {"tasks"}:
            items = body["tasks"]
            if not isinstance(items, list) or not 1 <= len(items) <= BATCH_LIMIT:
                raise InvalidRequest("tasks must be a list of 1 to 10000 task objects")
            rows = await self._run(_submit_many, db, items)
            return {"tasks": [row_to_wire(r) for r in rows]}
        return row_to_wire(await self._run(_submit_one, db, body))

    async def _list(self, q: dict[str, str]) -> list[dict[str, Any]]:
        db = await self._db()
        rows, cooling = await self._run(lambda: (_rows(db, q), db.cooldowns(time.time())))
        return [_cooling_detail(row_to_wire(r), r, cooling) for r in rows]

    async def _show(self, task_id: str) -> dict[str, Any]:
        db = await self._db()
        row, cooling = await self._run(
            lambda: (_control.get(db, task_id), db.cooldowns(time.time()))
        )
        return _cooling_detail(row_to_wire(row), row, cooling)

    # -- waiting -----------------------------------------------------------------------------

    async def _wait_many(self, ids: list[str], timeout: float) -> list[dict[str, Any]]:
        """The tasks once every one has finished (committed), or after ``timeout``."""
        db = await self._db()
        rows = await self._run(_many, db, ids)  # unknown ids: TaskNotFound now
        if all(r.snap.phase is Phase.DONE for r in rows) or timeout <= 0:
            return [row_to_wire(r) for r in rows]
        wakeups = self._listen()
        await wakeups.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sessions = {r.session for r in rows}
        with wakeups.watch(None if len(sessions) > 1 else sessions.pop()) as watch:
            while True:
                rows = await self._run(_many, db, ids)
                left = deadline - loop.time()
                if all(r.snap.phase is Phase.DONE for r in rows) or left <= 0:
                    return [row_to_wire(r) for r in rows]
                await watch.sleep(left)

    # -- events ------------------------------------------------------------------------------

    async def events(
        self,
        session: str,
        since: int | None,
        *,
        kinds: str | None = None,
        completions: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """The daemon's event lines: a replay, ``replay_end`` with its cursor, then each
        state event as a worker commits it (woken by LISTEN). Progress is not logged in
        the store: live progress lines come from the running tasks' checkpoints
        (``_progress``), none in a replay."""
        wanted = kinds_of(kinds)
        db = await self._db()
        wakeups = self._listen()
        await wakeups.start()
        lines = _Lines(db, self._run, with_task=completions)
        progress = None
        if "progress" in wanted and not completions:
            progress = Progress(db, self._run, session)
        with wakeups.watch(session, progress=progress is not None) as watch:
            last, replay = await self._run(_replay, db, session, since, completions)
            # A replay from a cursor looks back to it for a while: an event whose commit
            # was late (see _window) may still come in behind the replayed ones.
            window = Window(last if since is None or completions else since)
            for ev in replay:
                last = max(last, ev.cursor)
                window.fresh(ev.cursor)
                if "state" in wanted:
                    yield await lines.of(ev)
            yield {"kind": "replay_end", "cursor": last}
            start = window.settle()
            while True:
                try:
                    new = await self._run(db.events_since, session, start, LIVE_BATCH)
                except StoreError as exc:
                    if not (isinstance(exc, StoreUnavailable) or db.connection_lost()):
                        raise
                    await watch.sleep(FALLBACK)  # the store is back when a read works
                    continue
                for ev in new:
                    if not window.fresh(ev.cursor):
                        continue
                    if "state" not in wanted:
                        continue
                    if completions and ev.state != TaskState.COMPLETED.value:
                        continue
                    yield await lines.of(ev)
                if len(new) == LIVE_BATCH:
                    start = new[-1].cursor  # the rest of this wake-up's events
                    continue
                sleep = FALLBACK
                if progress is not None:
                    for line in await progress.lines():
                        yield line
                    sleep = progress.wait(FALLBACK)
                # Woken by the next commit of the session (a late one included).
                await watch.sleep(sleep)
                if progress is not None:
                    progress.pending = True
                start = window.settle()


class _Lines:
    """Event lines as the daemon writes them: each with its task's metadata (read once per
    task), and with ``with_task`` the whole task (completions)."""

    def __init__(self, db: PostgresStore, run: Any, *, with_task: bool) -> None:
        self.db, self.run, self.with_task = db, run, with_task
        self._meta: dict[str, dict[str, Any] | None] = {}

    async def of(self, ev: StoredEvent) -> dict[str, Any]:
        out = ev.to_event().to_json()
        if len(self._meta) >= META_CACHE:
            self._meta.clear()
        if self.with_task or ev.task_id not in self._meta:
            row = await self.run(self.db.get, ev.task_id)
            self._meta[ev.task_id] = None if row is None else row.metadata
            if self.with_task and row is not None:
                out["task"] = row_to_wire(row)
        out["metadata"] = self._meta[ev.task_id]
        return out


def _cooling_detail(
    wire: dict[str, Any], row: TaskRow, cooling: list[tuple[str, float, str]]
) -> dict[str, Any]:
    """A queued task no worker holds says why none takes it: its origin asked the fleet to
    wait (a worker holding it says so itself, as a daemon does)."""
    if row.snap.phase is not Phase.QUEUED or not cooling:
        return wire
    origin = origin_key(row.spec.url)
    for o, until, reason in cooling:
        if o == origin:
            at = time.strftime("%H:%M:%S", time.localtime(until))
            wire["detail"] = f"origin asked to wait until {at} ({reason} from {origin})"
    return wire


def _bounded(url: str) -> str:
    """``url`` as a libpq connection string whose statements time out."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise InvalidRequest(f"bad PostgreSQL URL {redact_store_url(url)!r}: {exc}") from None
    limit = f"-c statement_timeout={round(STATEMENT_TIMEOUT * 1000)}"
    params["options"] = f"{params.get('options') or ''} {limit}".strip()
    return make_conninfo("", **params)


# -- store work (on the client's store thread) -----------------------------------------


def _submit_one(db: PostgresStore, body: object) -> TaskRow:
    built = build_item(db.find_key, body)
    if isinstance(built, str):
        return _control.get(db, built)
    try:
        db.insert(built)
    except DuplicateKey:  # another client won the race for this key: its task is the one
        again = build_item(db.find_key, body)
        if isinstance(again, TaskRow):
            raise
        return _control.get(db, again)
    return _control.get(db, built.id)


def _submit_many(db: PostgresStore, items: list[object]) -> list[TaskRow]:
    batch: dict[str, TaskRow] = {}
    built = [build_item(db.find_key, item, batch) for item in items]  # all checked first
    new = list({b.id: b for b in built if isinstance(b, TaskRow)}.values())
    if new:
        db.insert_many(new)
    ids = [b if isinstance(b, str) else b.id for b in built]
    rows = {r.id: r for r in db.get_many(ids)}
    return [rows[i] for i in ids]


def _rows(db: PostgresStore, q: dict[str, str]) -> list[TaskRow]:
    session, prefix = q.get("session"), q.get("prefix")
    if q.get("key") is not None and session is not None:
        twin = db.find_key(session, q["key"])
        return [] if twin is None else [twin]
    if prefix is not None:
        return [r for r in db.find_prefix(prefix.lower()) if session in (None, r.session)]
    if {"state", "since", "after"} & set(q):
        return db.page(
            session,
            phases=phases_of([q.get("state", "")]),
            since=None if q.get("since") is None else number(q, "since", 0.0),
            after=q.get("after"),
            limit=integer(q, "limit", -1),
        )
    limit, offset = integer(q, "limit", -1), integer(q, "offset", 0)
    if limit < -1 or offset < 0:
        raise InvalidRequest("limit and offset must not be negative")
    return db.list(session, limit=limit, offset=offset)


def _many(db: PostgresStore, ids: list[str]) -> list[TaskRow]:
    found = {r.id: r for r in db.get_many(ids)}
    return [found[i] if i in found else _control.get(db, i) for i in ids]


def _replay(
    db: PostgresStore, session: str, since: int | None, completions: bool
) -> tuple[int, list[StoredEvent]]:
    last = db.last_cursor()  # read before the replay: nothing falls between
    if since is None or completions:
        return last, db.unacknowledged_completions(session)
    replay = db.events_since(session, since, limit=REPLAY_LIMIT)
    if len(replay) == REPLAY_LIMIT:  # the rest comes live
        last = replay[-1].cursor
    return last, replay


def _acknowledge(db: PostgresStore, task_id: str) -> TaskRow:
    row = _control.get(db, task_id)
    if row.snap.phase is not Phase.DONE or not db.acknowledge(task_id):
        raise InvalidTransition(
            f"task {task_id} has not finished: only a completion can be acknowledged "
            "(acknowledge it when completions() or events() delivers it)"
        )
    return _control.get(db, task_id)


def _remove(db: PostgresStore, task_id: str) -> None:
    row = _control.get(db, task_id)
    if row.snap.phase is not Phase.DONE or row.hook_state == "pending":
        state = PHASE_STATE[row.snap.phase].value
        raise InvalidTransition(
            f"cannot remove task {task_id} while it is {state}"
            + (": cancel it first, or wait until it completes" if state != "completed" else
               ": its completion hook has not run yet"),
            task_id=task_id,
        )  # fmt: skip
    db.remove([task_id])


def _prune(db: PostgresStore, before: float | None, session: str | None) -> list[str]:
    ids = db.finished_ids(before=before, session=session)
    keep: set[str] = set()
    for start in range(0, len(ids), 1000):  # a hook not yet run keeps its task
        rows = db.get_many(ids[start : start + 1000])
        keep.update(r.id for r in rows if r.hook_state == "pending")
    return db.remove([i for i in ids if i not in keep])
