"""One-connection downloads: send the machine's request, write the body into the partial.

Carries out ``SendRequest`` and ``WriteBody`` for a task and reports what happened as an
event; every decision stays in the machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict

from bgtransfer._engine._context import Context
from bgtransfer._engine._files import PartialLost, size_of
from bgtransfer._engine._http import body_failure, lower_headers, request_failure, tls_for
from bgtransfer._engine._live import Live
from bgtransfer._engine._rawbody import RawBody, take_over
from bgtransfer._engine._sources import has_sources, request_via_sources
from bgtransfer._engine._verify import Checks, Feed, want_headers
from bgtransfer._engine._watchdog import slow_error, too_slow
from bgtransfer._exceptions import DestinationError
from bgtransfer._protocol import _machine as M

__all__ = ["Downloader"]


class _Halted(Exception):
    """The machine ended the task while its body was being read."""


class Downloader:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.checks = Checks(ctx)

    async def request(self, live: Live, action: M.SendRequest) -> M.Event:
        if has_sources(self.ctx, live):  # mirrors or a refresh hook: see _sources
            return await request_via_sources(self.ctx, live, action, self._send)
        return await self._send(live, action)

    async def _send(self, live: Live, action: M.SendRequest) -> M.Event:
        ctx = self.ctx
        if live.resp is not None:
            live.resp.close()
            live.resp = None
        ctx.history.end(live)
        range_value = dict(action.headers).get("Range")
        live.attempt = ctx.history.open(
            live, action.url, int(range_value[6:].split("-")[0]) if range_value else None
        )
        rt = live.machine.spec.request_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=rt, sock_read=rt)
        try:
            resp = await ctx.http.get(
                action.url,
                headers=CIMultiDict(
                    [*action.headers, *want_headers(action.headers, ranged=bool(range_value))]
                ),
                allow_redirects=False,
                timeout=timeout,
                ssl=tls_for(live.machine.spec),
            )
        except Exception as exc:
            failure = request_failure(exc, rt)
            if failure is None:
                raise
            if not failure.retryable:
                return M.Failed(failure.error)
            return M.TransportFailed(failure.error)
        live.resp = resp
        if live.attempt is not None:
            live.attempt.status = resp.status
        headers = lower_headers(resp)
        ctx.pacing.heard(action.url, resp.status, headers)
        return M.Response(resp.status, headers, wall_time=time.time(), reason=resp.reason)

    async def stream(self, live: Live, action: M.WriteBody) -> M.Event:
        got = await self._stream(live, action)
        if isinstance(got, Feed):  # the body is in: check it before the machine hears so
            m = live.machine
            return await got.ended(m.snap.total if m.snap.total is not None else m.snap.offset)
        return got

    async def _stream(self, live: Live, action: M.WriteBody) -> M.Event | Feed:
        ctx = self.ctx
        m, part, resp = live.machine, live.part, live.resp
        assert resp is not None
        part.close()
        if action.truncate and size_of(part.path):
            # About to overwrite an earlier version's bytes (a restart): the new validator
            # goes on record first, or a crash could leave new bytes under the old one. A
            # direct commit, not an await: aiohttp drops a buffered body whose connection
            # closes while nobody reads it. Restarts are rare; the loop can afford it.
            ctx.save_now(live)
        try:
            part.open(action.start)
        except PartialLost as exc:
            return M.RestartRequired(exc.message)
        except (DestinationError, OSError) as exc:
            msg = exc.message if isinstance(exc, DestinationError) else str(exc)
            return M.Failed(DestinationError(msg))
        feed = self.checks.begin(
            live, resp.status, lower_headers(resp), action.start, restart=action.truncate
        )
        if feed is not None and not isinstance(feed, Feed):
            return feed
        watchdog = None
        if m.spec.low_speed_limit > 0:
            watchdog = asyncio.get_running_loop().create_task(self._watch(live))
        rt = m.spec.request_timeout

        def take(chunk: bytes | memoryview) -> None:
            part.write(chunk)
            if live.attempt is not None:
                live.attempt.bytes += len(chunk)
            # No await between write and handle: the offset always matches the file.
            actions = m.handle(M.DataWritten(len(chunk)), now=ctx.clock())
            if feed is not None:
                feed.wrote(chunk, m.snap.offset)
            if actions:
                ctx.execute(live, actions)
                if m.terminal:  # max_bytes: the machine failed the task mid-body
                    raise _Halted

        raw = take_over(resp, tls=True)
        try:
            if raw is None:
                async for chunk in resp.content.iter_chunked(ctx.pacing.read_size(live)):
                    take(chunk)
                    await ctx.pacing.throttle(live, len(chunk))
                resp.release()
            else:
                live.raw = raw
                await self._raw_stream(raw, take, rt, live)
                resp.close()  # the connection is ours now: never back to the pool
            live.resp = None
            return M.BodyEnded() if feed is None else feed
        except _Halted:
            assert m.snap.error is not None
            return M.Failed(m.snap.error)  # already applied: the machine ignores it
        except DestinationError as exc:
            # Disk full and the like: keep what is committed and wait for a person.
            return M.Interrupted(f"suspended: {exc.message}; resume() once it is fixed")
        except Exception as exc:
            failure = body_failure(exc, rt, f"connection lost at byte {m.snap.offset}")
            if failure is None:
                raise
            if live.slow and not isinstance(exc, TimeoutError):  # the watchdog cut it
                spec = m.spec
                return M.TransportFailed(
                    slow_error(spec.low_speed_limit, spec.low_speed_time), slow=True
                )
            return M.TransportFailed(failure.error)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            live.slow = False
            if raw is not None:
                raw.close()
                live.raw = None
            if live.resp is not None:
                live.resp.close()
                live.resp = None

    async def _raw_stream(
        self,
        raw: RawBody,
        take: Callable[[bytes | memoryview], None],
        rt: float,
        live: Live,
    ) -> None:
        pacing = self.ctx.pacing
        if raw.buffered:
            take(raw.buffered)
            await pacing.throttle(live, len(raw.buffered))
            raw.buffered = b""
        size = pacing.read_size(live)
        left = raw.remaining
        while left > 0:
            async with asyncio.timeout(rt):
                chunk = await raw.read(min(size, left))  # valid until the next read
            if not chunk:
                raise ConnectionError("body cut short")
            take(chunk)
            left -= len(chunk)
            await pacing.throttle(live, len(chunk))

    async def _watch(self, live: Live) -> None:
        """Cut the connection of a trickling download; the read then fails as "slow"."""
        m = live.machine
        await too_slow(
            lambda: m.snap.offset, m.spec.low_speed_limit, m.spec.low_speed_time, self.ctx.clock
        )
        live.slow = True
        if live.raw is not None:
            live.raw.cut()
        if live.resp is not None:
            live.resp.close()
