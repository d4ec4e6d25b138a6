"""What every task's machine shares: phases, time, control calls, retries, recovery.

:class:`Lifecycle` holds the rules that do not depend on what is transferred: the phase and
public state, resource time (active time only), the snapshot to persist, suspend / resume /
cancel, failures with backoff and the give-up rules, and what a restart of the process
tells the task (``Interrupted``, ``Detached``). The exchange itself is the subclass's: a
download (:class:`._machine.TransferMachine`) or an upload (:class:`._upload.UploadMachine`).
Its ``handle()`` consults the subclass's transition table (:mod:`._transitions`) first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

from bgtransfer._exceptions import (
    Cancelled,
    ContentChanged,
    InvalidTransition,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import PHASE_STATE, Phase, TaskState
from bgtransfer._protocol._actions import (
    Action,
    Enqueue,
    Persist,
    RemovePartial,
    ScheduleRetry,
    StopTransfer,
)
from bgtransfer._protocol._events import (
    CancelCleaned,
    CancelRequested,
    Detached,
    Event,
    Failed,
    Finalized,
    FinalizeFailed,
    Interrupted,
    ResumeRequested,
    RetryDue,
    Sealed,
    SuspendRequested,
    TransportFailed,
    Waiting,
)
from bgtransfer._protocol._giveup import exhausted, resource_timeout, retryable, wait_or_give_up
from bgtransfer._protocol._retry import Backoff
from bgtransfer._protocol._task import Snapshot, Spec
from bgtransfer._protocol._transitions import Rule

__all__ = ["Handler", "Lifecycle"]

Handler = Callable[[Any, Any, float], list[Action]]


@dataclass(slots=True)
class Lifecycle:
    """A task's state; :meth:`handle` is the only way to change it."""

    # Set by each subclass: the allowed phases per event, and the method for each event.
    TRANSITIONS: ClassVar[Mapping[type[Any], Rule]] = {}
    HANDLERS: ClassVar[Mapping[type[Any], Handler]] = {}

    spec: Spec
    snap: Snapshot = field(default_factory=Snapshot)
    rng: Callable[[], float] = lambda: 0.5
    # In-memory only: reset when rebuilt from a snapshot.
    committed: int = 0
    _active_since: float | None = None
    _last_checkpoint: float = 0.0
    _failures_at_start: int = 0
    _failing_since: float | None = None  # active seconds at the first failure of a run

    @classmethod
    def from_snapshot(
        cls, spec: Spec, snap: Snapshot, *, rng: Callable[[], float] | None = None
    ) -> Self:
        m = cls(spec=spec, snap=replace(snap))
        if rng is not None:
            m.rng = rng
        m.committed = snap.offset
        return m

    @property
    def state(self) -> TaskState:
        return PHASE_STATE[self.snap.phase]

    @property
    def terminal(self) -> bool:
        return self.snap.phase is Phase.DONE

    def elapsed(self, now: float) -> float:
        """Resource time used so far: active time only, suspended time excluded."""
        running = 0.0 if self._active_since is None else max(0.0, now - self._active_since)
        return self.snap.active_seconds + running

    def time_left(self, now: float) -> float:
        return self.spec.resource_timeout - self.elapsed(now)

    def snapshot(self, now: float) -> Snapshot:
        """The snapshot to persist, with active time accounted up to ``now``."""
        out = replace(self.snap)
        out.active_seconds = self.elapsed(now)
        out.offset = self.committed
        return out

    def checkpoint(self, now: float, boot_id: str | None) -> Snapshot:
        """:meth:`snapshot`, stamped with the boot (``boot_id``, None if unknown) in which
        its bytes were written: what recovery compares to tell a crash of the process (the
        page cache kept the bytes) from one of the machine."""
        self.snap.boot_id = boot_id
        return self.snapshot(now)

    def handle(self, event: Event, *, now: float) -> list[Action]:
        """Apply ``event`` at monotonic time ``now``; the actions to carry out, in order.

        An event the table does not allow in the current phase raises
        :class:`InvalidTransition` and changes nothing (or, where the table says it is
        ignored there, returns no action and changes nothing).
        """
        return self._apply(event, now)

    def _apply(self, event: object, now: float) -> list[Action]:
        kind = type(event)
        rule = self.TRANSITIONS.get(kind)
        if rule is None:
            raise InvalidTransition(f"unknown event {event!r}")
        phase = self.snap.phase
        if phase in rule.ignores:
            return []
        if phase not in rule.moves:
            raise InvalidTransition(
                rule.refusal.format(event=kind.__name__, phase=phase, state=self.state.value)
            )
        return self.HANDLERS[kind](self, event, now)

    def _transport_failed(self, event: TransportFailed, now: float) -> list[Action]:
        return self._failed(event.error, None, now, slow=event.slow)

    def _retry_due(self, event: RetryDue, now: float) -> list[Action]:
        self._set(Phase.QUEUED, "queued (retry due)", now)
        return [Enqueue()]

    def _sealed(self, event: Sealed, now: float) -> list[Action]:
        # The driver synced the file before it said so: the whole offset may be stored.
        self.committed = self.snap.offset
        return []

    def _finalized(self, event: Finalized, now: float) -> list[Action]:
        self.committed = self.snap.offset
        self._set(Phase.DONE, "completed", now)
        return [Persist()]

    def _finalize_failed(self, event: FinalizeFailed, now: float) -> list[Action]:
        return self._fail(event.error, now)

    def _cancel_cleaned(self, event: CancelCleaned, now: float) -> list[Action]:
        self.snap.error = Cancelled("the task was cancelled")
        self._set(Phase.DONE, "cancelled", now)
        return [Persist()]

    def _waiting(self, event: Waiting, now: float) -> list[Action]:
        self.snap.detail = event.detail
        return [Persist()]

    def _failed_event(self, event: Failed, now: float) -> list[Action]:
        return self._fail(event.error, now)

    def _interrupted(self, event: Interrupted, now: float) -> list[Action]:
        if self.snap.phase is Phase.CANCELING:
            return [RemovePartial()]
        # The driver made the written bytes durable before this event; keep them all.
        self.committed = self.snap.offset
        self._set(Phase.SUSPENDED, event.reason, now)
        return [Persist()]

    def _detached(self, event: Detached, now: float) -> list[Action]:
        # As for Interrupted, the driver synced every written byte before it said so.
        self.committed = self.snap.offset
        return [Persist()]

    def _set(self, phase: Phase, detail: str, now: float) -> None:
        active_before = self.snap.phase not in (Phase.SUSPENDED, Phase.DONE)
        active_after = phase not in (Phase.SUSPENDED, Phase.DONE)
        if active_before and not active_after:
            self.snap.active_seconds = self.elapsed(now)
            self._active_since = None
        elif active_after and self._active_since is None:
            self._active_since = now
        self.snap.phase = phase
        self.snap.detail = detail

    def _count_restart(self, now: float) -> list[Action] | None:
        self.snap.restarts += 1
        if self.snap.restarts > self.spec.max_restarts:
            err = ContentChanged(
                f"resource keeps changing: restarted {self.spec.max_restarts} times "
                "(the server's answers to range requests did not match the first download)"
            )
            return self._fail(err, now)
        return None

    def _failed(
        self, err: TransferError, retry_after: float | None, now: float, *, slow: bool = False
    ) -> list[Action]:
        self.committed = self.snap.offset
        if not self._retryable(err):
            return self._fail(err, now)
        if self.time_left(now) <= 0:
            return self._fail(self._resource_timeout_error(err), now)
        if slow:
            # What a too-slow attempt trickled is no progress: the backoff keeps growing.
            self.snap.failures = max(self.snap.failures, self._failures_at_start)
        self.snap.failures += 1
        last = exhausted(
            self.spec, err, attempts=self.snap.attempts, failures=self.snap.failures, slow=slow
        )
        if last is not None:
            return self._fail(last, now)
        backoff = Backoff(self.spec.retry_wait, self.spec.max_retry_wait)
        delay = backoff.delay(self.snap.failures, self.rng())
        if retry_after is not None:
            delay = retry_after
        if self.spec.retry_for is not None and self._failing_since is None:
            self._failing_since = self.elapsed(now)
        failing = self.elapsed(now) - (self._failing_since or 0.0)
        wait = wait_or_give_up(
            self.spec,
            err,
            delay=delay,
            attempts=self.snap.attempts,
            failing=failing,
            left=self.time_left(now),
            retry_after=retry_after,
        )
        if isinstance(wait, TransferError):
            return self._fail(wait, now)
        delay = wait
        cause = f"after {err.status_code}" if err.status_code else f"after {err.message}"
        self._set(Phase.WAITING_RETRY, f"retrying in {delay:.1f} s {cause}", now)
        return [Persist(), ScheduleRetry(delay)]

    def _retryable(self, err: TransferError) -> bool:
        return retryable(err)

    def _resource_timeout_error(self, last: TransferError | None) -> TransferTimeout:
        return resource_timeout(self.spec.resource_timeout, last)

    def _fail(self, err: TransferError, now: float) -> list[Action]:
        # A failed task can never be resumed, so its partial file is only litter
        # (curl --remove-on-error); bytes_received keeps how far it got.
        self.snap.error = err
        self.snap.unsafe_sent = False
        self.committed = self.snap.offset
        self._set(Phase.DONE, f"failed: {err.message}", now)
        return [StopTransfer(), RemovePartial(), Persist()]

    def _suspend(self, event: SuspendRequested, now: float) -> list[Action]:
        self.committed = self.snap.offset
        # Resuming is the caller's own decision to send the request again.
        self.snap.unsafe_sent = False
        self._set(Phase.SUSPENDED, "suspended", now)
        return [StopTransfer(), Persist()]

    def _resume(self, event: ResumeRequested, now: float) -> list[Action]:
        self._set(Phase.QUEUED, "queued", now)
        return [Persist(), Enqueue()]

    def _cancel(self, event: CancelRequested, now: float) -> list[Action]:
        self.snap.offset = 0
        self.snap.segments = ()
        self.committed = 0
        self._set(Phase.CANCELING, "canceling", now)
        return [StopTransfer(), Persist(), RemovePartial()]


Lifecycle.HANDLERS = {
    TransportFailed: Lifecycle._transport_failed,
    RetryDue: Lifecycle._retry_due,
    Sealed: Lifecycle._sealed,
    Finalized: Lifecycle._finalized,
    FinalizeFailed: Lifecycle._finalize_failed,
    SuspendRequested: Lifecycle._suspend,
    ResumeRequested: Lifecycle._resume,
    CancelRequested: Lifecycle._cancel,
    CancelCleaned: Lifecycle._cancel_cleaned,
    Failed: Lifecycle._failed_event,
    Interrupted: Lifecycle._interrupted,
    Detached: Lifecycle._detached,
    Waiting: Lifecycle._waiting,
}
