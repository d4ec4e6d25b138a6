"""What a driver (plain download, segments, upload, finalize) may use of the engine.

Drivers carry out one action of a task's machine and report the outcome as an event. They
need the HTTP session, the clock and sleep (injectable, so retry tests need no wall time),
a way to hand the machine an event and carry out what it answers, the history, the pacing
rules and the committer, and nothing else of the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bgtransfer._engine._commit import Committer
from bgtransfer._engine._history import History
from bgtransfer._engine._limiter import Limiter
from bgtransfer._engine._live import Live
from bgtransfer._engine._pacing import Pacing
from bgtransfer._protocol import _machine as M

__all__ = ["Context", "Sleep"]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(eq=False)
class Context:
    clock: Callable[[], float]
    sleep: Sleep
    # Carry out actions that need no awaiting (checkpoints, closing, scheduling a retry).
    execute: Callable[[Live, list[M.Action]], None]
    # Until every save submitted so far is committed.
    flush: Callable[[], Awaitable[None]]
    # A direct commit of the task's snapshot, for the rare saves that must land before
    # the next byte is written.
    save_now: Callable[[Live], None]
    history: History
    pacing: Pacing
    limiter: Limiter
    session: aiohttp.ClientSession | None = None  # set when the engine starts
    committer: Committer | None = None  # likewise
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # fire and forget, kept alive
    # Foreground sessions' refresh callables (issue 17), by task id: not storable, so they
    # live as long as the session that gave them.
    refresh_hooks: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "the engine has not started"
        return self.session

    @property
    def commit(self) -> Committer:
        assert self.committer is not None, "the engine has not started"
        return self.committer

    def apply(self, live: Live, event: M.Event) -> None:
        """Hand the machine an event and carry out what it decides."""
        self.execute(live, live.machine.handle(event, now=self.clock()))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
