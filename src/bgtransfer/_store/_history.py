"""The history (one row per request) and the state-event log, in SQL both backends run."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from bgtransfer._exceptions import DestinationError, StoreError
from bgtransfer._protocol._machine import Snapshot
from bgtransfer._redact import redact
from bgtransfer._store._base import Attempt, EventRecord, LeaseLost, StoredEvent
from bgtransfer._store._codec import (
    ATTEMPT_SELECT,
    EVENT_SELECT,
    SNAPSHOT_SET,
    attempt_from,
    event_from,
    event_record,
    snapshot_values,
)
from bgtransfer._store._conn import SQLBase

__all__ = ["HistoryMixin"]


class HistoryMixin(SQLBase):
    def save(
        self,
        task_id: str,
        snap: Snapshot,
        *,
        wall_time: float,
        event: tuple[str, str] | None = None,
        hook_state: str | None = None,
        attempts: Sequence[Attempt] = (),
        fence: int | None = None,
    ) -> int | None:
        """Persist a snapshot; with ``event=(session, state)`` also log a state event, and
        add the ``attempts`` to the history.

        All go in one transaction, so the log never disagrees with the task row.
        Returns the new event's cursor.
        """
        events = [] if event is None else [event_record(event[0], event[1], snap, wall_time)]
        with self._tx():
            cursors = self.save_in_tx(
                task_id,
                snap,
                wall_time=wall_time,
                events=events,
                hook_state=hook_state,
                attempts=attempts,
                fence=fence,
            )
        return cursors[0] if cursors else None

    def save_in_tx(
        self,
        task_id: str,
        snap: Snapshot | None,
        *,
        wall_time: float,
        events: Sequence[EventRecord] = (),
        hook_state: str | None = None,
        attempts: Sequence[Attempt] = (),
        fence: int | None = None,
    ) -> builtins.list[int | None]:
        """:meth:`save` inside a transaction the caller holds (group commit), with any
        number of state events (saves merged in the queue). Returns their cursors.

        ``snap=None``: only the attempts (a request that starts changes no offset).
        ``fence``: the generation of this worker's claim (fleet mode); LeaseLost, and the
        caller's transaction must roll back, if the task was claimed again since."""
        if fence is not None:  # first: a refused commit does no other work
            self._check_fence(task_id, fence, snap, wall_time)
        for attempt in attempts:
            self._add_attempt_in_tx(task_id, attempt)
        if snap is None:
            return []
        if hook_state is not None:
            self._db.execute("UPDATE tasks SET hook_state=? WHERE id=?", (hook_state, task_id))
        cursors: builtins.list[int | None] = []
        for ev in events:
            (cursor,) = self._db.execute(
                "INSERT INTO events (session, task_id, state, phase, detail, bytes_received, "
                "bytes_expected, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING cursor",
                (ev[0], task_id, *ev[1:]),
            ).fetchone()
            cursors.append(int(cursor))
        if fence is None:  # else written by the check
            self._update_task(
                f"UPDATE tasks SET {SNAPSHOT_SET} WHERE id=?",
                (*snapshot_values(snap, wall_time), task_id),
            )
        return cursors

    def _update_task(self, sql: str, args: Sequence[object]) -> int:
        try:
            return self._db.execute(sql, args).rowcount
        except self._integrity_error:
            # Only the one-live-task-per-path index can refuse a snapshot: a finished
            # task made live again while another one downloads to its path.
            raise DestinationError(
                "another unfinished task already downloads to this task's path"
            ) from None

    def _check_fence(
        self, task_id: str, fence: int, snap: Snapshot | None, wall_time: float
    ) -> None:
        # The token is checked by the statement that writes (or, with no snapshot, by one
        # that locks the row): a claim in between cannot slip past the check.
        if not self._fencing:
            raise StoreError("this store has no claims to fence (fleet mode needs PostgreSQL)")
        if snap is None:
            count = self._db.execute(
                "UPDATE tasks SET generation=generation WHERE id=? AND generation=?",
                (task_id, fence),
            ).rowcount
        else:
            count = self._update_task(
                f"UPDATE tasks SET {SNAPSHOT_SET} WHERE id=? AND generation=?",
                (*snapshot_values(snap, wall_time), task_id, fence),
            )
        if count == 0:
            raise LeaseLost(f"the claim on task {task_id} (generation {fence}) was lost")

    def _add_attempt_in_tx(self, task_id: str, attempt: Attempt) -> None:
        url, outcome = redact(attempt.url), redact(attempt.outcome)  # never keep a password
        if attempt.key is not None:
            cur = self._db.execute(
                "UPDATE attempts SET ended_at=?, url=?, status=?, bytes=?, outcome=? "
                "WHERE task_id=? AND key=?",
                (attempt.ended_at, url, attempt.status, attempt.bytes, outcome, task_id,
                 attempt.key),
            )  # fmt: skip
            if cur.rowcount:
                return
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE task_id=?", (task_id,)
        ).fetchone()
        self._db.execute(
            "INSERT INTO attempts (task_id, n, started_at, ended_at, url, range_start, "
            "status, bytes, outcome, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, n, attempt.started_at, attempt.ended_at, url, attempt.range_start,
             attempt.status, attempt.bytes, outcome, attempt.key),
        )  # fmt: skip

    def close_open_attempts(
        self, outcome: str, *, background: bool | None = None, task_id: str | None = None
    ) -> int:
        """Mark the requests a dead process left open (recovery): of one task, or of every
        background (or foreground) task. They ended at the task's last commit, at the latest."""
        where = "ended_at IS NULL"
        args: builtins.list[object] = [outcome]
        if task_id is not None:
            where += " AND task_id=?"
            args.append(task_id)
        if background is not None:
            where += " AND task_id IN (SELECT id FROM tasks WHERE background=?)"
            args.append(int(background))
        last = "(SELECT updated_at FROM tasks WHERE tasks.id=attempts.task_id)"
        with self._tx():
            cur = self._db.execute(
                f"UPDATE attempts SET outcome=?, ended_at=CASE WHEN {last} > started_at "
                f"THEN {last} ELSE started_at END WHERE {where}",
                args,
            )
        return int(cur.rowcount)

    def attempts(self, task_id: str) -> builtins.list[Attempt]:
        cur = self._db.execute(
            f"SELECT {ATTEMPT_SELECT} FROM attempts WHERE task_id=? ORDER BY n", (task_id,)
        )
        return [attempt_from(r) for r in cur.fetchall()]

    def events_since(
        self, session: str, cursor: int, limit: int = 1000
    ) -> builtins.list[StoredEvent]:
        """The session's state events after ``cursor``, except completions that were
        acknowledged (or whose task was forgotten): an acknowledged completion never comes
        back, whatever cursor a client resumes from."""
        cur = self._db.execute(
            f"SELECT {EVENT_SELECT} FROM events e LEFT JOIN tasks t ON t.id = e.task_id "
            "WHERE e.session=? AND e.cursor>? "
            "AND NOT (e.phase='done' AND COALESCE(t.acknowledged, 1)=1) "
            "ORDER BY e.cursor LIMIT ?",
            (session, cursor, self._limit(limit)),
        )
        return [event_from(r) for r in cur.fetchall()]

    def unacknowledged_completions(self, session: str) -> builtins.list[StoredEvent]:
        """The last event of every finished, unacknowledged task of the session."""
        cur = self._db.execute(
            f"SELECT {EVENT_SELECT} FROM events e JOIN tasks t ON t.id = e.task_id "
            "WHERE t.session=? AND t.phase='done' AND t.acknowledged=0 "
            "AND e.cursor = (SELECT MAX(cursor) FROM events WHERE task_id = t.id) "
            "ORDER BY e.cursor",
            (session,),
        )
        return [event_from(r) for r in cur.fetchall()]

    def last_cursor(self) -> int:
        (value,) = self._db.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()
        return int(value)

    def acknowledge(self, task_id: str) -> bool:
        """Mark a finished task's completion handled; False (nothing stored) when the task
        has not finished, so an early acknowledgement cannot swallow its completion."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tasks SET acknowledged=1 WHERE id=? AND phase='done'", (task_id,)
            )
        return cur.rowcount > 0
