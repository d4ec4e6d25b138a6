"""The machine's transition table: which phases accept each event, and where it leads.

Like h11's ``_state.py``, the rules are data. ``TransferMachine.handle()`` looks the event up
here before it runs a handler: in a phase the rule ``ignores`` the event is a no-op, in a
phase it does not ``accept`` it is refused (:class:`InvalidTransition`, nothing changes).
``leads_to`` lists where a handler may leave the task; the stateful test checks every step
against it, and ``tools/state_diagram.py`` draws the diagram in ARCHITECTURE.md from it.

Uploads share the table and add their own events (:data:`UPLOAD_TRANSITIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bgtransfer._models import Phase
from bgtransfer._protocol._events import (
    BodyEnded,
    CancelCleaned,
    CancelRequested,
    DataWritten,
    Detached,
    Failed,
    Finalized,
    FinalizeFailed,
    FinalResponse,
    Interrupted,
    Recovered,
    Response,
    RestartRequired,
    ResumeRequested,
    RetryDue,
    Sealed,
    SegmentsDeclined,
    SegmentsPlanned,
    SegmentSplit,
    SegmentWritten,
    Start,
    SuspendRequested,
    TransportFailed,
    UploadCreated,
    UploadLost,
    UploadProgress,
    Waiting,
)

__all__ = ["RUNNING", "TRANSITIONS", "UPLOAD_TRANSITIONS", "Rule"]

_REFUSED = "{event} is not allowed while the task is {phase}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one event type may act.

    ``moves``: each phase that accepts the event, with every phase its handler can leave the
    task in (the phase itself when the task may stay). ``ignores``: phases where the event
    is a no-op (a repeated or late control call). Anywhere else it is refused with
    ``refusal`` (``{event}``, ``{phase}`` and ``{state}`` are filled in).
    """

    moves: Mapping[Phase, frozenset[Phase]]
    ignores: frozenset[Phase] = frozenset()
    refusal: str = _REFUSED

    @property
    def accepts(self) -> frozenset[Phase]:
        return frozenset(self.moves)


def _rule(
    moves: Mapping[Phase, set[Phase]],
    *,
    ignores: frozenset[Phase] | set[Phase] = frozenset(),
    refusal: str = _REFUSED,
) -> Rule:
    return Rule({k: frozenset(v) for k, v in moves.items()}, frozenset(ignores), refusal)


def _each(sources: frozenset[Phase] | set[Phase], targets: set[Phase]) -> dict[Phase, set[Phase]]:
    return {src: set(targets) for src in sources}


def _stay(sources: frozenset[Phase] | set[Phase], *also: Phase) -> dict[Phase, set[Phase]]:
    return {src: {src, *also} for src in sources}


Q, C, T, W, V = (
    Phase.QUEUED,
    Phase.CONNECTING,
    Phase.TRANSFERRING,
    Phase.WAITING_RETRY,
    Phase.VERIFYING,
)
S, X, D = Phase.SUSPENDED, Phase.CANCELING, Phase.DONE
RUNNING = frozenset({Q, C, T, W, V})

TRANSITIONS: Mapping[type[Any], Rule] = {
    Start: _rule({Q: {C, D}}),
    Waiting: _rule({Q: {Q}}),
    Response: _rule({C: {C, T, W, V, D}}),
    DataWritten: _rule({T: {T, D}}),
    SegmentWritten: _rule({T: {T, D}}),
    SegmentsPlanned: _rule({T: {T}}),
    SegmentsDeclined: _rule({T: {T}}),
    SegmentSplit: _rule({T: {T}}),
    RestartRequired: _rule({T: {C, D}}),
    BodyEnded: _rule({T: {V, W, D}}),
    TransportFailed: _rule(_each({C, T}, {W, D})),
    RetryDue: _rule({W: {Q}}),
    Sealed: _rule({V: {V}}),
    Finalized: _rule({V: {D}}),
    FinalizeFailed: _rule({V: {D}}),
    SuspendRequested: _rule(
        _each(RUNNING, {S}), ignores={S}, refusal="cannot suspend a task that is {state}"
    ),
    ResumeRequested: _rule(
        {S: {Q}}, ignores=RUNNING, refusal="cannot resume a task that is {state}"
    ),
    CancelRequested: _rule(
        _each(RUNNING | {S}, {X}), ignores={X}, refusal="cannot cancel a task that is {state}"
    ),
    CancelCleaned: _rule({X: {D}}),
    Failed: _rule(_each(RUNNING | {S, X}, {D}), ignores={D}),
    # Found canceling, the driver only finishes the cleanup (RemovePartial).
    Interrupted: _rule(_each(RUNNING, {S}) | {X: {X}}, ignores={D, S}),
    Recovered: _rule(_stay(RUNNING | {S}, D)),
    Detached: _rule(_stay(RUNNING | {S, X})),
}

# Uploads end with FinalResponse: their machine refuses Response (TypeError: a driver bug).
UPLOAD_TRANSITIONS: Mapping[type[Any], Rule] = {
    **{kind: rule for kind, rule in TRANSITIONS.items() if kind is not Response},
    UploadCreated: _rule(_each({C, T}, {T})),
    UploadProgress: _rule(_each({C, T}, {T})),
    UploadLost: _rule(_each({C, T}, {C, D})),
    FinalResponse: _rule(_each({C, T}, {W, D})),
}
