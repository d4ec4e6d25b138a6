"""The live record of one task the engine holds in memory (running, waiting to retry, or
finished until its completion commits)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bgtransfer._engine._files import PartialFile
from bgtransfer._engine._limiter import Slot
from bgtransfer._engine._rawbody import RawBody
from bgtransfer._engine._sidecar_io import record_of
from bgtransfer._exceptions import DestinationError
from bgtransfer._models import Event, Phase, TaskState
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._upload import UploadMachine
from bgtransfer._store._base import Attempt, TaskRow

__all__ = ["Live", "phase"]

log = logging.getLogger("bgtransfer")


@dataclass(eq=False)
class Live:
    row: TaskRow
    machine: M.TransferMachine
    part: PartialFile
    runner: asyncio.Task[None] | None = None
    resp: aiohttp.ClientResponse | None = None
    retry_delay: float = 0.0
    slow: bool = False
    last_phase: Phase | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: Attempt | None = None  # the request in flight, for the history
    attempts_done: list[Attempt] = field(default_factory=list)  # for the next commit
    checksums: set[str] | None = None  # tus: algorithms the server offers (None: not asked)
    checksum_failures: int = 0
    slot: Slot | None = None  # the limiter slot the current attempt holds
    raw: RawBody | None = None  # the body being read straight off the socket
    dir_unsynced: str | None = None  # renamed into; fsynced by the next group commit
    origin: str = ""  # scheme://host:port of the task's URL (limits, cool-downs)
    response_spool: str | None = None  # uploads: the last answer's whole body, if kept

    @classmethod
    def of(cls, row: TaskRow, rng: Callable[[], float]) -> Live:
        """The live record of a stored task: its machine restored from the snapshot."""
        kind = UploadMachine if row.spec.kind == "upload" else M.TransferMachine
        machine = kind.from_snapshot(row.spec, row.snap, rng=rng)
        live = cls(row=row, machine=machine, part=PartialFile(row.partial, machine.snap))
        if row.spec.kind == "download":  # its record, for adopting the partial elsewhere
            live.part.record.describe = lambda: record_of(
                row.spec, machine.snap, row.path, row.partial
            )
        live.last_phase = row.snap.phase
        return live

    def truncate(self, size: int) -> None:
        """Cut the partial file to ``size``: bytes of an earlier boot past the checkpoint,
        maybe never synced, go before a checkpoint of this boot could vouch for them."""
        try:
            self.part.open(size)
        except (DestinationError, OSError) as exc:
            log.warning("task %s: cannot trim the partial file: %s", self.row.id, exc)
        finally:
            self.part.close()

    def event(
        self, snap: M.Snapshot, kind: str, state: TaskState, received: int, cursor: int | None
    ) -> Event:
        """The live event of a save that landed."""
        return Event(
            task_id=self.row.id,
            session=self.row.session,
            kind=kind,
            state=state,
            detail=snap.detail,
            bytes_received=received,
            bytes_expected=snap.total,
            error=snap.error,
            cursor=cursor,
        )


def phase(m: M.TransferMachine) -> Phase:
    # A call, not an attribute read, so type checkers do not narrow across awaits.
    return m.snap.phase
