"""Fleet mode, what holds across workers besides claims: the workers' list (heartbeats,
stale and gone workers), origin cool-downs, the live counts bandwidth caps are shared out
by, and tasks given back because a worker's disk is full.

Cool-downs and caps are rows every worker reads; a change of either is announced (statement
triggers, see ``_pgschema`` version 5) on ``bgtransfer_cooldown`` / ``bgtransfer_limits``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bgtransfer._store._pgschema import LIMITS_CHANNEL

__all__ = ["GONE_AFTER", "STALE_LEASES", "FleetMixin", "WorkerRow"]

# A worker not heard of for this many of its leases is "stale": its leases ran out, it may
# be dead, paused or cut off (it comes back "alive" with its next heartbeat).
STALE_LEASES = 1.0
# A worker not heard of for a day is "gone": any worker's heartbeat removes it from the list.
GONE_AFTER = 86_400.0
_DEFAULT_LEASE = 30.0  # a worker of schema version 4 did not say its lease


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    held: int  # tasks it holds an unexpired lease on
    lease_s: float | None = None  # its lease (None: a worker older than schema 5)

    def state(self, now: float) -> str:
        """``alive``: heard of within its lease; ``stale``: not since (it holds nothing
        any more: another worker may take its tasks over)."""
        lease = _DEFAULT_LEASE if self.lease_s is None else self.lease_s
        return "alive" if now - self.last_seen <= STALE_LEASES * lease else "stale"


class FleetMixin:
    """Mixed into :class:`PostgresStore` before ``SQLStore`` (its ``save_cooldown`` wins)."""

    _db: Any
    if TYPE_CHECKING:  # PostgresStore's (declared only: a body here would shadow them)

        def _tx(self) -> AbstractContextManager[None]: ...
        def cooldowns(self, now: float) -> builtins.list[tuple[str, float, str]]: ...
        def limits(self) -> tuple[int | None, dict[str, int]]: ...

    # -- workers -------------------------------------------------------------------------

    def heartbeat(
        self,
        name: str,
        host: str,
        pid: int,
        *,
        lease_s: float | None = None,
        now: float | None = None,
    ) -> None:
        """The worker is alive (it renews its leases at the same pace). Workers gone for
        longer than :data:`GONE_AFTER` leave the list with it."""
        now = time.time() if now is None else now
        with self._tx():
            self._db.execute(
                "INSERT INTO workers (name, host, pid, started_at, last_seen, lease_s) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET host=excluded.host, "
                "pid=excluded.pid, last_seen=excluded.last_seen, lease_s=excluded.lease_s, "
                "started_at=CASE WHEN workers.pid = excluded.pid THEN workers.started_at "
                "ELSE excluded.started_at END",
                (name, host, pid, now, now, lease_s),
            )
            self._db.execute("DELETE FROM workers WHERE last_seen < ?", (now - GONE_AFTER,))

    def forget_worker(self, name: str) -> None:
        """A worker that stops cleanly leaves the list (its leases were released)."""
        with self._tx():
            self._db.execute("DELETE FROM workers WHERE name=?", (name,))

    def workers(self, *, now: float | None = None) -> builtins.list[WorkerRow]:
        """Every worker heard of within :data:`GONE_AFTER`, with the number of tasks it
        holds a live lease on."""
        now = time.time() if now is None else now
        cur = self._db.execute(
            "SELECT w.name, w.host, w.pid, w.started_at, w.last_seen, COUNT(t.id), w.lease_s "
            "FROM workers w LEFT JOIN tasks t ON t.lease_owner = w.name AND t.lease_expires >= ? "
            "WHERE w.last_seen >= ? "
            "GROUP BY w.name, w.host, w.pid, w.started_at, w.last_seen, w.lease_s "
            "ORDER BY w.name",
            (now, now - GONE_AFTER),
        )
        return [
            WorkerRow(str(n), str(h), int(p), float(s), float(seen), int(held), _float(lease))
            for n, h, p, s, seen, held, lease in cur.fetchall()
        ]

    # -- origin cool-downs ---------------------------------------------------------------

    def save_cooldown(self, origin: str, until: float, reason: str, *, now: float) -> None:
        """Workers hear 429s independently: the later ``until`` wins (one worker's short
        Retry-After never shortens another's long one). The trigger notifies every worker."""
        with self._tx():
            self._db.execute("DELETE FROM cooldowns WHERE until <= ?", (now,))
            self._db.execute(
                "INSERT INTO cooldowns (origin, until, reason) VALUES (?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET "
                "reason=CASE WHEN excluded.until > cooldowns.until THEN excluded.reason "
                "ELSE cooldowns.reason END, until=GREATEST(cooldowns.until, excluded.until)",
                (origin, until, reason),
            )

    # -- bandwidth caps, shared out ------------------------------------------------------

    def pace_facts(
        self, *, now: float | None = None
    ) -> tuple[
        builtins.list[tuple[str, float, str]],
        tuple[int | None, dict[str, int]],
        dict[tuple[str, str | None], int],
    ]:
        """What a worker paces by, in one round trip's worth of reads: the cool-downs in
        force, the caps (global, per origin) and the live leases per (holder, origin)."""
        now = time.time() if now is None else now
        cool = self.cooldowns(now)
        caps = self.limits()
        cur = self._db.execute(
            "SELECT lease_owner, origin, COUNT(*) FROM tasks WHERE lease_owner IS NOT NULL "
            "AND phase != 'done' AND lease_expires >= ? GROUP BY lease_owner, origin",
            (now,),
        )
        counts = {(str(w), None if o is None else str(o)): int(n) for w, o, n in cur.fetchall()}
        return cool, caps, counts

    def announce_limits(self) -> None:
        """Have every worker share the caps out again (this one's share of the live tasks
        changed: it claimed)."""
        self._db.execute(f"NOTIFY {LIMITS_CHANNEL}")

    # -- a worker's disk is full -----------------------------------------------------------

    def give_back_full(
        self,
        items: Sequence[tuple[str, int]],
        marks: Sequence[str],
        not_before: float,
        why: str,
    ) -> set[str]:
        """Tasks (id, token) this worker suspended because it could not write (their detail
        holds one of ``marks``: the errors of a full disk) go back to the queue, released,
        not before ``not_before`` (any worker may take them then: another one's disk, or
        this one's once there is room), their detail prefixed by ``why``. Returns the ids
        given back this way; the others are untouched."""
        if not items or not marks:
            return set()
        found = " OR ".join("strpos(detail, ?) > 0" for _ in marks)
        back: set[str] = set()
        with self._tx():
            for task_id, token in items:
                row = self._db.execute(
                    "UPDATE tasks SET phase='queued', not_before=?, detail=? || regexp_replace("
                    "regexp_replace(detail, '^suspended: ', ''), '; resume[(][)] once.*$', ''), "
                    "lease_owner=NULL, lease_expires=NULL WHERE id=? AND generation=? "
                    f"AND phase='suspended' AND control IS NULL AND ({found}) RETURNING id",
                    (not_before, why, task_id, token, *marks),
                ).fetchone()
                if row is not None:
                    back.add(str(row[0]))
                    # Its event, as any change of state has one: streams and waits see
                    # it running (queued) again, not still suspended.
                    self._db.execute(
                        "INSERT INTO events (session, task_id, state, phase, detail, "
                        "bytes_received, bytes_expected, error, at) SELECT session, id, "
                        "'running', phase, detail, \"offset\", total, NULL, ? FROM tasks "
                        "WHERE id=?",
                        (time.time(), task_id),
                    )
        return back


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
