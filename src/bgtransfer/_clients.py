"""Which client of the control protocol a face uses: the home's daemon (``_client``), or in
fleet mode a PostgreSQL store answering the same protocol in this process
(``_storeclient``). The CLI and the Python API see one interface, :class:`Client`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from bgtransfer._client import DaemonClient
from bgtransfer._home import StoreChoice

__all__ = ["Client", "open_client"]


class Client(Protocol):
    """What the faces need of a client of the control protocol: :class:`DaemonClient` (the
    home's daemon) or ``bgtransfer._storeclient.StoreClient`` (a fleet's PostgreSQL store).
    The same requests, the same JSON answers, the same event lines."""

    home: str  # where it talks to, as messages name it (a home, or a store URL redacted)
    peer_pid: int | None

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
        start: bool = True,
        waiter: bool = False,
        followed: int | None = None,
    ) -> Any: ...

    def events(
        self,
        session: str,
        since: int | None,
        *,
        kinds: str | None = None,
        completions: bool = False,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def ensure_running(self) -> dict[str, Any]: ...

    async def ping(self) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


def open_client(
    home: str, choice: StoreChoice | None = None, *, keep_alive: bool = False
) -> Client:
    """The client for the store ``choice`` names: the daemon of ``home`` (none named, or a
    ``sqlite://`` URL naming a home: that home's daemon), or a fleet's PostgreSQL store, used
    directly."""
    if choice is not None and choice.fleet:
        # Imported only in fleet mode: the daemon's clients never load psycopg.
        from bgtransfer._storeclient import StoreClient

        return StoreClient(choice.url)
    return DaemonClient(
        choice.home if choice is not None and choice.home else home, keep_alive=keep_alive
    )
