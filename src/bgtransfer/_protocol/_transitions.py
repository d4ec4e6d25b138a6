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

Q, C, T, W, V = (
    Phase.QUEUED,
    Phase.CONNECTING,
    Phase.TRANSFERRING,
    Phase.WAITING_RETRY,
    Phase.VERIFYING,
)

_REFUSED = "{event} is not allowed while the task is {phase}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one event type may act.

    ``accepts``: the phases whose handler runs. ``ignores``: phases where the event is a
    no-op (a repeated or late control call). Anywhere else it is refused with ``refusal``
    (``{event}``, ``{phase}`` and ``{state}`` are filled in). ``leads_to``: every phase the
    handler can leave the task in (staying put included), for the diagram and the tests.
    """

    accepts: frozenset[Phase]
    leads_to: frozenset[Phase]
    ignores: frozenset[Phase] = frozenset()
    refusal: str = _REFUSED


def _rule(
    accepts: set[Phase],
    leads_to: set[Phase],
    ignores: set[Phase] | None = None,
    refusal: str = _REFUSED,
) -> Rule:
    return Rule(frozenset(accepts), frozenset(leads_to), frozenset(ignores or ()), refusal)


S, X, D = Phase.SUSPENDED, Phase.CANCELING, Phase.DONE
RUNNING = {Q, C, T, W, V}

TRANSITIONS: Mapping[type[Any], Rule] = {
    Start: _rule({Q}, {C, D}),
    Waiting: _rule({Q}, {Q}),
    Response: _rule({C}, {C, T, W, V, D}),
    DataWritten: _rule({T}, {T, D}),
    SegmentWritten: _rule({T}, {T, D}),
    SegmentsPlanned: _rule({T}, {T}),
    SegmentsDeclined: _rule({T}, {T}),
    SegmentSplit: _rule({T}, {T}),
    RestartRequired: _rule({T}, {C, D}),
    BodyEnded: _rule({T}, {V, W, D}),
    TransportFailed: _rule({C, T}, {W, D}),
    RetryDue: _rule({W}, {Q}),
    Finalized: _rule({V}, {D}),
    FinalizeFailed: _rule({V}, {D}),
    SuspendRequested: _rule(RUNNING, {S}, {S}, "cannot suspend a task that is {state}"),
    ResumeRequested: _rule({S}, {Q}, RUNNING, "cannot resume a task that is {state}"),
    CancelRequested: _rule(RUNNING | {S}, {X}, {X}, "cannot cancel a task that is {state}"),
    CancelCleaned: _rule({X}, {D}),
    Failed: _rule(RUNNING | {S, X}, {D}, {D}),
    Interrupted: _rule(RUNNING | {X}, {S, X}, {D, S}),
    Recovered: _rule(RUNNING | {S}, RUNNING | {S, D}),
    Detached: _rule(RUNNING | {S, X}, RUNNING | {S, X}),
}

# Uploads: Response is not theirs (the upload machine refuses it with TypeError, a driver bug).
UPLOAD_TRANSITIONS: Mapping[type[Any], Rule] = {
    **TRANSITIONS,
    UploadCreated: _rule({C, T}, {T}),
    UploadProgress: _rule({C, T}, {T}),
    UploadLost: _rule({C, T}, {C, D}),
    FinalResponse: _rule({C, T}, {W, D}),
}
