"""A worker's lease book: the pure decisions of fleet mode (no clock, no store, no files).

Which claims a worker holds (task id -> generation), when to renew them, when a worker that
cannot reach the store must give its tasks up (before its leases run out, so that by the
time another worker may take a task over this one has stopped touching it), and which tasks
it does not try again for a while (a directory it cannot reach).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AWAY_S", "LeaseBook"]

AWAY_S = 60.0  # seconds a worker leaves alone a task whose directory it could not reach


@dataclass
class LeaseBook:
    lease_s: float
    held: dict[str, int] = field(default_factory=dict)  # task id -> claim generation
    away: dict[str, float] = field(default_factory=dict)  # task id -> not before (time)
    last_renewed: float | None = None  # when the last renewal that landed was sent

    @property
    def renew_every(self) -> float:
        """Three renewals per lease: one lost round trip never costs a lease."""
        return self.lease_s / 3

    @property
    def give_up_after(self) -> float:
        """Seconds without a renewal after which the worker stops its tasks: two missed
        rounds, a third of the lease before anyone may take them over (that third is the
        margin for the tasks to stop and for clocks that disagree)."""
        return self.lease_s * 2 / 3

    @property
    def sweep_every(self) -> float:
        """How often to look for claims nobody announced (leases that ran out, start times
        that came): the only periodic query, and not on the hot path."""
        return max(0.5, self.lease_s / 2)

    def hold(self, task_id: str, token: int) -> None:
        self.held[task_id] = token
        self.away.pop(task_id, None)

    def drop(self, task_id: str, token: int | None = None) -> int | None:
        """Forget a claim (of generation ``token`` only, if given); returns its token."""
        if token is not None and self.held.get(task_id) != token:
            return None
        return self.held.pop(task_id, None)

    def renewed(self, sent_at: float, asked: dict[str, int], kept: set[str]) -> list[str]:
        """A renewal sent at ``sent_at`` for ``asked`` landed and kept ``kept``: the tasks
        whose claim is gone (taken over) and must stop now."""
        self.last_renewed = (
            sent_at if self.last_renewed is None else max(self.last_renewed, sent_at)
        )
        return [t for t, g in asked.items() if t not in kept and self.held.get(t) == g]

    def must_give_up(self, now: float) -> bool:
        """No renewal has landed for too long: stop every task (zombie-proof by our own
        hand), before the leases run out."""
        if not self.held or self.last_renewed is None:
            return False
        return now - self.last_renewed >= self.give_up_after

    def room(self, max_active: int) -> int:
        return max(0, max_active - len(self.held))

    def set_away(self, task_id: str, now: float) -> None:
        self.away[task_id] = now + AWAY_S

    def staying_away(self, now: float) -> list[str]:
        """Ids not to claim now; forgets the ones whose time has come."""
        for task_id in [t for t, until in self.away.items() if until <= now]:
            del self.away[task_id]
        return sorted(self.away)
