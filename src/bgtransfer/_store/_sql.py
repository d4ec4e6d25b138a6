"""The task table and the queue, in SQL both backends run; a backend adds the connection,
its transactions and its schema (``_sqlite``, ``_postgres``)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from bgtransfer._exceptions import DestinationError, TaskNotFound
from bgtransfer._models import Phase
from bgtransfer._store._base import DuplicateKey, TaskRow
from bgtransfer._store._codec import COLUMNS, INSERT_COLUMNS, stored_key, task_from, task_values
from bgtransfer._store._history import HistoryMixin
from bgtransfer._store._jobs import JobsMixin

__all__ = ["SQLStore"]

_RUNNING = tuple(
    p.value
    for p in (
        Phase.CONNECTING,
        Phase.TRANSFERRING,
        Phase.WAITING_RETRY,
        Phase.VERIFYING,
    )
)


class SQLStore(HistoryMixin, JobsMixin):
    def insert(self, row: TaskRow) -> None:
        with self._tx():
            self._insert_in_tx(row)

    def insert_many(self, rows: Sequence[TaskRow]) -> None:
        """Several new tasks in one transaction (one fsync instead of one per task)."""
        with self._tx():
            for row in rows:
                self._insert_in_tx(row)

    def insert_in_tx(self, rows: Sequence[TaskRow]) -> None:
        """New tasks inside the caller's transaction (the group commit), all or none: a
        refused row (key or path taken) rolls back these rows only, through a savepoint."""
        self._db.execute("SAVEPOINT new_tasks")
        try:
            for row in rows:
                self._insert_in_tx(row)
        except BaseException:
            self._db.execute("ROLLBACK TO SAVEPOINT new_tasks")
            self._db.execute("RELEASE SAVEPOINT new_tasks")
            raise
        self._db.execute("RELEASE SAVEPOINT new_tasks")

    def _insert_in_tx(self, row: TaskRow) -> None:
        values = task_values(row)
        # The key first: a submit that both repeats a key and targets a busy path is a
        # repeat (the caller answers with the first task), whichever constraint the
        # database would have reported first.
        if (
            row.idempotency_key is not None
            and self._db.execute(
                "SELECT 1 FROM tasks WHERE idempotency_key=?",
                (stored_key(row.session, row.idempotency_key),),
            ).fetchone()
        ):
            raise DuplicateKey(
                f"session {row.session!r} already has a task with idempotency key "
                f"{row.idempotency_key!r}"
            )
        try:
            self._db.execute(
                f"INSERT INTO tasks ({INSERT_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
        except self._integrity_error as exc:
            if "idempotency_key" in str(exc):
                raise DuplicateKey(
                    f"session {row.session!r} already has a task with idempotency key "
                    f"{row.idempotency_key!r}"
                ) from exc
            raise DestinationError(
                f"another unfinished task already downloads to {row.path}"
            ) from None

    def set_owner(self, task_id: str, owner: str | None) -> None:
        with self._tx():
            self._db.execute("UPDATE tasks SET owner=? WHERE id=?", (owner, task_id))

    def set_hook_state(self, task_id: str, state: str) -> None:
        with self._tx():
            self._db.execute("UPDATE tasks SET hook_state=? WHERE id=?", (state, task_id))

    # -- reading -----------------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[TaskRow]:
        return [task_from(r) for r in self._db.execute(sql, args).fetchall()]

    def get(self, task_id: str) -> TaskRow | None:
        found = self._rows(f"SELECT {COLUMNS} FROM tasks WHERE id=?", (task_id,))
        return found[0] if found else None

    def done_rows(self, ids: Sequence[str]) -> builtins.list[TaskRow]:
        """The tasks of ``ids`` whose completion is committed; unknown ids are skipped.

        The rows of the others are not decoded: a waiter names hundreds of unfinished
        tasks and most of them are still running.
        """
        out: builtins.list[TaskRow] = []
        for start in range(0, len(ids), 500):  # under every SQLite's variable limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            out += self._rows(
                f"SELECT {COLUMNS} FROM tasks WHERE id IN ({marks}) AND phase='done'", chunk
            )
        return out

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` name a task, without decoding any row."""
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            cur = self._db.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", chunk)
            out.update(i for (i,) in cur.fetchall())
        return out

    def find_prefix(self, prefix: str) -> builtins.list[TaskRow]:
        return self._rows(
            f"SELECT {COLUMNS} FROM tasks WHERE id >= ? AND id < ? LIMIT 2",
            (prefix, prefix + "\uffff"),
        )

    def find_key(self, session: str, key: str) -> TaskRow | None:
        """The session's task submitted with this idempotency key (keys are per session)."""
        found = self._rows(
            f"SELECT {COLUMNS} FROM tasks WHERE idempotency_key=?", (stored_key(session, key),)
        )
        return found[0] if found else None

    def page(
        self,
        session: str | None,
        *,
        phases: Sequence[str] = (),
        since: float | None = None,
        after: str | None = None,
        limit: int = -1,
    ) -> builtins.list[TaskRow]:
        """Tasks in creation order: only those in ``phases`` (all when empty), created at or
        after ``since``, and after the task ``after`` (a page cursor: the last id of the page
        before). Each filter is served by an index (tasks_session_phase, tasks_session)."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if session is not None:
            where.append("session=?")
            args.append(session)
        if phases:
            where.append(f"phase IN ({', '.join('?' * len(phases))})")
            args.extend(phases)
        if since is not None:
            where.append("created_at>=?")
            args.append(since)
        if after is not None:
            found = self._db.execute("SELECT created_at FROM tasks WHERE id=?", (after,))
            mark = found.fetchone()
            if mark is None:
                raise TaskNotFound(f"the page cursor {after!r} is not a task id")
            where.append("(created_at, id) > (?, ?)")
            args.extend((mark[0], after))
        sql = f"SELECT {COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._rows(sql + " ORDER BY created_at, id LIMIT ?", (*args, self._limit(limit)))

    def list(
        self, session: str | None = None, *, limit: int = -1, offset: int = 0
    ) -> builtins.list[TaskRow]:
        """Tasks in creation order, a page at a time (``limit=-1``: all)."""
        if session is None:
            return self._rows(
                f"SELECT {COLUMNS} FROM tasks ORDER BY created_at, id LIMIT ? OFFSET ?",
                (self._limit(limit), offset),
            )
        return self._rows(
            f"SELECT {COLUMNS} FROM tasks WHERE session=? ORDER BY created_at, id LIMIT ? OFFSET ?",
            (session, self._limit(limit), offset),
        )

    def pending_hooks(self) -> builtins.list[TaskRow]:
        return self._rows(
            f"SELECT {COLUMNS} FROM tasks WHERE hook_state='pending' ORDER BY finished_at"
        )

    def counts(self) -> dict[str, int]:
        cur = self._db.execute("SELECT phase, COUNT(*) FROM tasks GROUP BY phase")
        return {str(phase): int(n) for phase, n in cur.fetchall()}

    def finished_ids(
        self, *, before: float | None = None, session: str | None = None
    ) -> builtins.list[str]:
        """Ids of finished tasks (that finished before ``before``, of ``session``)."""
        sql, args = "SELECT id FROM tasks WHERE phase='done'", builtins.list[object]()
        if before is not None:
            sql, args = sql + " AND finished_at <= ?", [*args, before]
        if session is not None:
            sql, args = sql + " AND session = ?", [*args, session]
        return [r[0] for r in self._db.execute(sql + " ORDER BY finished_at, id", args)]

    def remove(self, task_ids: Sequence[str]) -> builtins.list[str]:
        """Forget finished tasks: their rows, history and events, in one transaction.

        Unfinished ones among ``task_ids`` are left alone; returns the ids removed."""
        removed: builtins.list[str] = []
        with self._tx():
            for start in range(0, len(task_ids), 500):
                chunk = builtins.list(task_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                done = [
                    r[0]
                    for r in self._db.execute(
                        f"SELECT id FROM tasks WHERE phase='done' AND id IN ({marks})", chunk
                    )
                ]
                if not done:
                    continue
                marks = ",".join("?" * len(done))
                for table, column in (("attempts", "task_id"), ("events", "task_id")):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", done)
                self._db.execute(f"DELETE FROM tasks WHERE id IN ({marks})", done)
                removed += done
        return removed

    # -- the queue ---------------------------------------------------------------------------

    def next_queued(
        self,
        *,
        background: bool,
        owner: str | None,
        limit: int,
        exclude: Collection[str] = (),
        known: Mapping[str, TaskRow] | None = None,
    ) -> builtins.list[TaskRow]:
        """The oldest queued tasks (of ``owner``, for a foreground engine), skipping the
        ``exclude`` ids (tasks the engine already holds).

        Ids first, whole rows only for the chosen ones: decoding a row costs far more than
        finding it, and the pump runs each time a task ends. ``known``: rows the caller
        has just inserted, taken as they are instead of read back.
        """
        want = limit + len(exclude)
        # Priority first (0 high .. 2 low), then age; tasks whose start time has not come
        # wait in the store (the engine sets a timer for the earliest).
        sql = (
            "SELECT id FROM tasks WHERE phase='queued' AND background=? "
            "AND (not_before IS NULL OR not_before <= ?) "
        )
        args: builtins.list[Any] = [int(background), time.time()]
        if owner is not None:
            sql += "AND owner=? "
            args.append(owner)
        cur = self._db.execute(sql + "ORDER BY priority, created_at, id LIMIT ?", (*args, want))
        ids = [i for (i,) in cur.fetchall() if i not in exclude][:limit]
        known = known or {}
        rows = {i: known[i] for i in ids if i in known}
        rest = [i for i in ids if i not in rows]
        if rest:
            marks = ", ".join("?" * len(rest))
            found = self._rows(f"SELECT {COLUMNS} FROM tasks WHERE id IN ({marks})", rest)
            rows.update((r.id, r) for r in found)
        return [rows[i] for i in ids if i in rows]

    def in_phase(self, phase: Phase, *, background: bool) -> builtins.list[TaskRow]:
        return self._rows(
            f"SELECT {COLUMNS} FROM tasks WHERE phase=? AND background=? ORDER BY created_at",
            (phase.value, int(background)),
        )

    def requeue_running(self, *, background: bool) -> int:
        """After a restart: every task that was running goes back to the queue, at once."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET phase='queued', detail='queued (recovered after a restart)' "
                f"WHERE background=? AND phase IN ({', '.join('?' * len(_RUNNING))})",
                (int(background), *_RUNNING),
            )
        return int(cur.rowcount)

    def interrupt_queued(self, owner: str, detail: str) -> None:
        """A foreground session closes: its tasks still in the queue become suspended."""
        with self._tx():
            self._db.execute(
                "UPDATE tasks SET phase='suspended', detail=?, owner=NULL "
                "WHERE phase='queued' AND owner=?",
                (detail, owner),
            )
