"""Extension: a background session by its identifier, as a relaunched app finds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgtransfer import TaskState
from bgtransfer.voltmx._sessions import DEFAULT_SESSION, session

if TYPE_CHECKING:
    from bgtransfer.voltmx.net import HttpRequest

__all__ = ["BackgroundSession"]


class BackgroundSession:
    """Extension: the background session a ``getSession()`` identifier names.

    Re-creating it in a later process (same identifier and home) reconnects to its tasks,
    as an iOS app relaunched for its background session does.
    """

    def __init__(self, identifier: str = DEFAULT_SESSION, *, home: str | None = None) -> None:
        self.identifier = identifier
        self.home = home

    def __str__(self) -> str:
        return self.identifier

    def __repr__(self) -> str:
        return f"BackgroundSession({self.identifier!r})"

    def getTasks(self) -> list[HttpRequest]:
        """Every request of this session, finished or not, as HttpRequest objects."""
        tasks = session(self.identifier, self.home, True).tasks()
        from bgtransfer.voltmx.net import HttpRequest

        return [HttpRequest._attach(self, t) for t in tasks]

    def getCompletedRequests(self) -> list[HttpRequest]:
        """Requests that completed and were not acknowledged (``request.acknowledge()``):
        what finished while the app was away."""
        done = [
            t
            for t in session(self.identifier, self.home, True).tasks()
            if t.state is TaskState.COMPLETED and not t.acknowledged
        ]
        from bgtransfer.voltmx.net import HttpRequest

        return [HttpRequest._attach(self, t) for t in done]
