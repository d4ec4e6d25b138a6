"""``GET /v1/events``: NDJSON, a replay, a ``replay_end`` line with the cursor where it ended,
then live events until the client goes or the daemon stops."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from bgtransfer._daemon._context import STOPPED_MESSAGE, Parts
from bgtransfer._daemon._stream import REPLAY_LIMIT, EventLines, kinds_of
from bgtransfer._daemon._wire import query_int
from bgtransfer._exceptions import DaemonStopped, InvalidRequest
from bgtransfer._models import Event, TaskState
from bgtransfer._store._base import StoredEvent

__all__ = ["EVENT_WRITE_TIMEOUT", "KEEPALIVE", "events"]

log = logging.getLogger("bgtransfer.daemon")

# A subscriber that takes no bytes for this long is dropped.
EVENT_WRITE_TIMEOUT = 30.0
KEEPALIVE = 15.0  # seconds without an event before an empty line (it also finds a gone client)


class _Stream:
    """One subscriber's stream: what it asked for, and the cursor it has been sent up to."""

    def __init__(self, parts: Parts, request: web.Request, resp: web.StreamResponse) -> None:
        q = request.query
        session = q.get("session")
        if not session:
            raise InvalidRequest("events need a session")
        self.parts, self.resp, self.session = parts, resp, session
        self.since = None if "since" not in q else query_int(request, "since", 0)
        self.follow = q.get("follow", "1") != "0"
        self.only_done = q.get("completions", "0") == "1"
        self.kinds = kinds_of(q.get("kinds"))
        self.lines = EventLines(parts.engine, with_task=self.only_done)
        self.last = 0

    async def send(self, data: bytes) -> None:
        async with asyncio.timeout(EVENT_WRITE_TIMEOUT):
            await self.resp.write(data)

    def _replayed(self) -> list[StoredEvent]:
        store = self.parts.store
        self.last = store.last_cursor()  # read before the replay: nothing falls between
        if self.since is None or self.only_done:
            # Replay what an app that was away must learn: unacknowledged completions.
            return store.unacknowledged_completions(self.session)
        replay = store.events_since(self.session, self.since, limit=REPLAY_LIMIT)
        if len(replay) == REPLAY_LIMIT:  # the rest comes after a reconnect
            self.last = replay[-1].cursor
        return replay

    async def replay(self) -> None:
        for ev in self._replayed():
            self.last = max(self.last, ev.cursor)
            if "state" in self.kinds:
                await self.send(self.lines.stored(ev))
        await self.send(json.dumps({"kind": "replay_end", "cursor": self.last}).encode() + b"\n")

    def _wanted(self, live: Event) -> bool:
        """Whether to send a live event; one the replay already sent is skipped."""
        if live.session != self.session:
            return False
        if live.cursor is not None:
            if live.cursor <= self.last:
                return False
            self.last = live.cursor
        if live.kind not in self.kinds:
            return False
        return not (self.only_done and live.state is not TaskState.COMPLETED)

    async def live(self, queue: asyncio.Queue[Event], stop: asyncio.Future[Any]) -> None:
        engine, stopping = self.parts.engine, self.parts.stopping
        while True:
            if stopping.is_set():
                stopped = {"error": {"code": DaemonStopped.code, "message": STOPPED_MESSAGE}}
                await self.send(json.dumps(stopped).encode() + b"\n")
                return
            if queue.empty() and not engine.subscribed(queue):
                log.warning("events: dropped a subscriber of %r that fell behind", self.session)
                return
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, stop}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                if not stopping.is_set():
                    await self.send(b"\n")  # keep-alive; also detects a gone client
                continue
            live = get.result()
            if self._wanted(live):
                await self.send(self.lines.live(live))


async def events(parts: Parts, request: web.Request) -> web.StreamResponse:
    """NDJSON: a replay, a ``replay_end`` line with the cursor where it ended, then live.

    ``since`` absent: the completion of every finished, unacknowledged task; ``since=C``:
    every state event after cursor C except acknowledged completions. ``kinds=state,
    progress`` filters; ``completions=1`` streams only completions, each with its task.
    A stop ends the stream with one last line ``{"error": {"code": "daemon_stopped",
    ...}}``; a subscriber that falls ``Parts.event_queue`` events behind, or takes no bytes
    for EVENT_WRITE_TIMEOUT, gets its stream ended (it reconnects from its cursor) so it
    cannot grow the daemon's memory.
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    stream = _Stream(parts, request, resp)
    await resp.prepare(request)
    queue = parts.engine.subscribe(parts.event_queue)
    stop = asyncio.ensure_future(parts.stopping.wait())
    try:
        await stream.replay()
        if stream.follow:
            await stream.live(queue, stop)
    except TimeoutError:
        log.warning("events: dropped a subscriber of %r that stopped reading", stream.session)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        stop.cancel()
        parts.engine.unsubscribe(queue)
    return resp
