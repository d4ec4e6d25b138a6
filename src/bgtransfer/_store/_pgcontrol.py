"""Fleet mode, the client's side of the PostgreSQL store: suspend, resume and cancel a task
whoever holds it, and a listener for new events on asyncio.

A task a worker holds (a live lease) is changed only by that worker: the client records the
request (``tasks.control``) and notifies the holder (``NOTIFY bgtransfer_control``), which
applies it through its own fenced commit; that commit clears the request (a trigger, see
``_pgschema``). A task nobody holds (queued, suspended, finished, or its holder's lease ran
out) is changed by the client itself, in one transaction under the row's lock: the pure
machine decides the new snapshot from the stored one, and the claim generation is raised so
that a holder whose lease ran out (a zombie) can commit nothing over it.

A cancel leaves cleanup to do (the partial file, an upload's resource on its server). The
transaction that cancels also leases the cleanup, so that a client that dies half-way leaves
nothing stranded: a download's partial is removed by the client under a short lease of its
own (once that runs out, a worker takes the task over and finishes it); a tus or IETF-draft
upload is handed to the workers at once (a lease that has already run out, and a NOTIFY on
the queue): the engine sends the DELETE (termination), as it does for a task it holds.
"""

from __future__ import annotations

import builtins
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from bgtransfer._exceptions import InvalidRequest, StoreUnavailable, TaskNotFound
from bgtransfer._protocol._task import Snapshot
from bgtransfer._redact import redact
from bgtransfer._store._base import TaskRow
from bgtransfer._store._codec import COLUMNS, event_record, task_from
from bgtransfer._store._history import HistoryMixin
from bgtransfer._store._pgjobs import FleetJobsMixin
from bgtransfer._store._pgschema import CONTROL_CHANNEL, CONTROLS, EVENTS_CHANNEL, QUEUE_CHANNEL

__all__ = [
    "CLEANUP_LEASE",
    "FOR_A_WORKER",
    "AsyncEventListener",
    "Change",
    "ControlMixin",
    "Controlled",
]

# Seconds a client holds a cancelled task while it removes the partial file (milliseconds,
# as a rule): if it dies meanwhile, a worker takes the task over after this and finishes.
CLEANUP_LEASE = 30.0
_RUNNING = ("connecting", "transferring", "waiting_retry", "verifying")
# The holder of a cleanup handed to the workers: a lease that has run out, so the next
# claim of any worker takes it (no worker is ever named so: the name has a space).
FOR_A_WORKER = "cleanup for a worker"


@dataclass(frozen=True, slots=True)
class Change:
    """What the machine made of a control event: the snapshot to store, the public state
    its event reports, and the hook state to set (a task that just finished with hooks)."""

    snap: Snapshot
    state: str
    hook_state: str | None = None
    # A cancel's cleanup, leased in the same transaction: "client" (the caller does it under
    # a lease of its own), "worker" (handed to the workers), None (nothing left to do).
    cleanup: str | None = None


# The machine's answer to a control event on a stored task: a Change, None when the task's
# phase ignores the event; it raises InvalidTransition when the phase refuses it.
Decide = Callable[[TaskRow], Change | None]


@dataclass(frozen=True, slots=True)
class Controlled:
    """The outcome of :meth:`ControlMixin.control_task`.

    ``outcome``: "applied" (stored by this call), "ignored" (the phase ignores the event:
    nothing to do) or "requested" (a worker holds the task: asked, not yet done).
    ``holder``: the worker holding a live lease on the task (None: nobody), and
    ``lease_left`` the seconds until that lease runs out; after that the client may apply
    the request itself."""

    row: TaskRow
    outcome: str
    holder: str | None = None
    lease_left: float = 0.0
    token: int | None = None  # applied: the generation that fences the caller's cleanup


class ControlMixin(HistoryMixin, FleetJobsMixin):
    """Control requests and their application (PostgreSQL only: claims and NOTIFY), and
    the fleet's background fetch jobs (``_pgjobs``)."""

    def request_control(self, task_id: str, action: str, *, now: float | None = None) -> bool:
        """Ask the worker holding ``task_id`` to ``action`` it ("suspend" or "cancel"),
        notifying it in the same transaction. False if no live lease holds the task (then
        the caller applies the change itself, see :meth:`control_task`)."""
        if action not in CONTROLS:
            raise InvalidRequest(f"control must be one of {', '.join(CONTROLS)}: {action!r}")
        now = time.time() if now is None else now
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET control=? WHERE id=? AND lease_owner IS NOT NULL "
                "AND lease_expires >= ? AND phase != 'done'",
                (action, task_id, now),
            )
            if cur.rowcount == 0:
                return False
            # Sent when the commit lands: the holder never reads a request not yet stored.
            self._db.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, task_id))
        return True

    def controls_for(
        self, worker: str, *, now: float | None = None
    ) -> builtins.list[tuple[str, str]]:
        """(task id, action) of every request waiting on the tasks ``worker`` holds."""
        now = time.time() if now is None else now
        cur = self._db.execute(
            "SELECT id, control FROM tasks WHERE lease_owner=? AND control IS NOT NULL "
            "AND lease_expires >= ? ORDER BY id",
            (worker, now),
        )
        return [(str(i), str(c)) for i, c in cur.fetchall()]

    def clear_control(self, task_id: str, token: int) -> bool:
        """The holder (generation ``token``) drops a request it will not apply (the task
        finished meanwhile). A commit that applies it clears it by itself."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET control=NULL WHERE id=? AND generation=?", (task_id, token)
            )
        return cur.rowcount > 0

    def control_task(
        self, task_id: str, action: str | None, decide: Decide, *, now: float | None = None
    ) -> Controlled:
        """Apply a control event to ``task_id`` under its row lock, or, if a worker holds
        it, ask that worker (``action``; None: the event cannot be asked of a holder, the
        caller waits for the lease to end instead).

        ``decide`` runs under the lock and raises InvalidTransition if the task's phase
        refuses the event (nothing changes then)."""
        now = time.time() if now is None else now
        with self._tx():
            found = self._db.execute(
                f"SELECT {COLUMNS}, lease_owner, lease_expires FROM tasks WHERE id=? FOR UPDATE",
                (task_id,),
            ).fetchone()
            if found is None:
                raise TaskNotFound(f"no task with id {task_id!r}", task_id=task_id)
            row = task_from(found[:-2])
            holder, expires = found[-2], found[-1]
            held = holder is not None and expires is not None and expires >= now
            lease = (str(holder), float(expires) - now) if held else (None, 0.0)
            change = decide(row)
            if change is None:
                return Controlled(row, "ignored", *lease)
            if held:
                if action is not None:
                    # Notified once per request (a caller that asks again wakes nobody).
                    cur = self._db.execute(
                        "UPDATE tasks SET control=? WHERE id=? AND control IS DISTINCT FROM ?",
                        (action, task_id, action),
                    )
                    if cur.rowcount:
                        self._db.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, task_id))
                return Controlled(row, "requested", *lease)
            record = event_record(row.session, change.state, change.snap, now)
            self.save_in_tx(
                task_id, change.snap, wall_time=now, events=[record], hook_state=change.hook_state
            )
            # A new generation: a holder whose lease ran out commits nothing over this.
            token = self._lease_cleanup(task_id, change.cleanup, now)
            stored = self._db.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE id=?", (task_id,)
            ).fetchone()
        return Controlled(task_from(stored), "applied", token=token)

    def _lease_cleanup(self, task_id: str, cleanup: str | None, now: float) -> int:
        """Raise the generation and lease the task to whoever does its cleanup (nobody:
        no lease); the new generation."""
        owner, expires = None, None
        if cleanup == "client":
            owner, expires = f"client {socket.gethostname()} {os.getpid()}", now + CLEANUP_LEASE
        elif cleanup == "worker":
            owner, expires = FOR_A_WORKER, 0.0
        (token,) = self._db.execute(
            "UPDATE tasks SET generation=generation+1, lease_owner=?, lease_expires=?, "
            "control=NULL WHERE id=? RETURNING generation",
            (owner, expires, task_id),
        ).fetchone()
        if cleanup == "worker":  # the claims take it at once
            self._db.execute("SELECT pg_notify(?, '')", (QUEUE_CHANNEL,))
        return int(token)

    def take_cleanup(self, task_id: str, cleanup: str, *, now: float | None = None) -> int | None:
        """Lease the cleanup of a cancel nobody is finishing (its task canceling, without a
        live lease: left by an earlier version, or given back by a worker that could not
        reach its file) as :meth:`control_task` does; the generation, or None if someone
        holds it (or it is not canceling any more)."""
        now = time.time() if now is None else now
        with self._tx():
            found = self._db.execute(
                "SELECT 1 FROM tasks WHERE id=? AND phase='canceling' AND "
                "(lease_owner IS NULL OR lease_expires < ?) FOR UPDATE",
                (task_id, now),
            ).fetchone()
            return None if found is None else self._lease_cleanup(task_id, cleanup, now)

    def finish_cleanup(
        self, task_id: str, token: int, decide: Decide, *, now: float | None = None
    ) -> TaskRow | None:
        """The caller finished the cleanup it leased (generation ``token``): store what
        ``decide`` makes of it and let the task go. None if its lease ran out and a worker
        took the task over meanwhile (that worker finishes it)."""
        now = time.time() if now is None else now
        with self._tx():
            found = self._db.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE id=? AND generation=? FOR UPDATE",
                (task_id, token),
            ).fetchone()
            if found is None:
                return None
            row = task_from(found)
            change = decide(row)
            if change is not None:
                record = event_record(row.session, change.state, change.snap, now)
                self.save_in_tx(
                    task_id, change.snap, wall_time=now, events=[record],
                    hook_state=change.hook_state,
                )  # fmt: skip
            self._db.execute(
                "UPDATE tasks SET lease_owner=NULL, lease_expires=NULL WHERE id=?", (task_id,)
            )
            stored = self._db.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE id=?", (task_id,)
            ).fetchone()
        return task_from(stored)

    def get_many(self, task_ids: Sequence[str]) -> builtins.list[TaskRow]:
        """The tasks of ``task_ids`` that exist, in one query (a batch wait reads them all
        on each wake-up)."""
        if not task_ids:
            return []
        return [
            task_from(r)
            for r in self._db.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE id = ANY(?)", (builtins.list(task_ids),)
            ).fetchall()
        ]

    def running_in(self, session: str) -> builtins.list[TaskRow]:
        """The tasks of ``session`` a worker is running (their checkpointed bytes are the
        progress a stream reports): as many as the fleet runs at once, at most."""
        running = ", ".join(f"'{p}'" for p in _RUNNING)
        cur = self._db.execute(
            f"SELECT {COLUMNS} FROM tasks WHERE session=? AND phase IN ({running}) "
            "ORDER BY created_at, id",
            (session,),
        )
        return [task_from(r) for r in cur.fetchall()]

    def connection_lost(self) -> bool:
        """Whether the connection was found lost (server restart, network cut, connection
        killed): the call that found it failed; the next one connects again."""
        con = getattr(self._db, "con", None)
        return con is not None and bool(con.closed or con.broken)

    def pending_control(self, task_id: str) -> str | None:
        """The request waiting on ``task_id`` for its holder, if any."""
        row = self._db.execute("SELECT control FROM tasks WHERE id=?", (task_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])


class AsyncEventListener:
    """LISTEN for new events (and control requests) on an asyncio connection of its own:
    what a client's waits and event streams sleep on, instead of polling the tables."""

    def __init__(
        self,
        url: str,
        channels: tuple[str, ...] = (EVENTS_CHANNEL,),
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url, self.channels = url, channels
        self.timeout = max(1, int(connect_timeout))
        self._con: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        """Connect and LISTEN; once this returns, no later commit goes unnoticed."""
        try:
            self._con = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=self.timeout
            )
            for channel in self.channels:
                await self._con.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            await self.close()
            raise StoreUnavailable(f"cannot listen for task events: {_safe(exc)}") from exc

    async def wait(self, timeout: float) -> builtins.list[tuple[str, str]]:
        """(channel, payload) of the notifications within ``timeout`` seconds (empty if
        none came), with any that arrived meanwhile."""
        if self._con is None:
            raise StoreUnavailable("the task event listener is not open")
        got: builtins.list[tuple[str, str]] = []
        try:
            got += [
                (n.channel, n.payload)
                async for n in self._con.notifies(timeout=timeout, stop_after=1)
            ]
            if got:
                got += [(n.channel, n.payload) async for n in self._con.notifies(timeout=0.0)]
        except psycopg.Error as exc:
            raise StoreUnavailable(f"lost the task event listener: {_safe(exc)}") from exc
        return got

    async def close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            await con.close()


def _safe(exc: BaseException) -> str:
    """An error's text on one line, without the connection string's password."""
    return redact(" ".join(str(exc).split()))
