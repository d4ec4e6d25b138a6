"""Segmented downloads: several connections write one partial file at their own offsets.

The engine calls :func:`run_segmented` for a ``WriteBody`` of a task with ``segments > 1``.
The decisions stay in the machine and in :mod:`bgtransfer._protocol._segments`; this module
only moves bytes:

* After the first response it asks :func:`plan_segments` whether to split. If not, the task
  goes on as a plain download (``SegmentsDeclined`` records why).
* Connection 0 keeps reading the first response up to the end of its segment; each other
  segment gets a ``Range: bytes=pos-(end-1)`` request with ``If-Range``. Every chunk is
  ``pwrite``-n at its offset and reported as ``SegmentWritten`` with no await in between, so
  the machine's segments always match the file. The machine's checkpoints (``Persist``)
  fdatasync the file before the per-segment offsets are committed.
* A connection that fails is retried on its own (backoff, ``SEGMENT_RETRIES`` times) from
  its segment's position; only after that does the whole task go to the machine's retry.
  An answer showing the resource changed ends every connection with ``RestartRequired``.
* A connection that finishes takes over half of the largest remaining segment (aria2).
* Suspend, cancel and the resource timeout cancel the driver's task; every connection is
  cancelled and closed before it returns, so nothing writes after a checkpoint.

The per-origin limit counts connections: the task's own limiter slot covers one, and each
further connection takes an extra slot of the origin (:meth:`Limiter.try_extra`) or is not
opened until one is free; queued tasks of that origin get their slot first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from multidict import CIMultiDict

from bgtransfer._engine._context import Context
from bgtransfer._engine._download import Downloader
from bgtransfer._engine._files import PartialLost
from bgtransfer._engine._http import body_failure, lower_headers, request_failure, tls_for
from bgtransfer._engine._limiter import Slot
from bgtransfer._engine._live import Live
from bgtransfer._engine._sources import release_segment, segment_answer, segment_source
from bgtransfer._engine._verify import BodyCheck, Feed, body_check, want_headers
from bgtransfer._engine._watchdog import too_slow
from bgtransfer._exceptions import (
    DestinationError,
    HTTPStatusError,
    ReadError,
    TransferError,
)
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._ranges import validator_changed
from bgtransfer._protocol._retry import Backoff
from bgtransfer._protocol._segments import (
    Segment,
    SegmentAnswer,
    check_segment_response,
    first_unfinished,
    plan_segments,
    split_largest,
)
from bgtransfer._redact import redact
from bgtransfer._store._base import Attempt

__all__ = ["SEGMENT_RETRIES", "run_segmented"]

log = logging.getLogger("bgtransfer")

# Quick retries of one connection before the whole task backs off through the machine.
SEGMENT_RETRIES = 3


class _Retry:
    """A failure one connection may retry on its own."""

    __slots__ = ("error",)

    def __init__(self, error: TransferError) -> None:
        self.error = error


async def run_segmented(
    ctx: Context, single: Downloader, live: Live, action: M.WriteBody
) -> M.Event:
    """Carry out ``WriteBody`` for a task that asked for segments (``single`` goes on when
    the download stays on one connection)."""
    m, resp = live.machine, live.resp
    assert resp is not None
    fresh = not m.snap.segments
    plan: tuple[Segment, ...] = ()
    why = "resumed"
    if fresh and action.start != 0:
        return await single.stream(live, action)  # resuming a download begun on one connection
    if fresh:
        plan, why = plan_segments(m.spec.segments, resp.status, lower_headers(resp), m.snap.total)
        if m.segments_distrusted:
            plan, why = (), "the server answered a range with other bytes"
        if not plan:
            log.info("task %s: one connection: %s", live.row.id, why)
            ctx.apply(live, M.SegmentsDeclined(why))
            return await single.stream(live, action)
    total = m.snap.total
    first = first_unfinished(m.snap.segments) if not fresh else 0
    if not fresh and (total is None or first is None or m.snap.segments[first][1] != action.start):
        return M.RestartRequired("the stored segments do not match the response")
    live.part.close()
    try:
        live.part.open_sized(total if total is not None else 0, fresh=fresh)
    except PartialLost as exc:
        return M.RestartRequired(exc.message)
    except (DestinationError, OSError) as exc:
        msg = exc.message if isinstance(exc, DestinationError) else str(exc)
        return M.Failed(DestinationError(msg))
    if fresh:
        ctx.apply(live, M.SegmentsPlanned(plan))
        log.info("task %s: %s", live.row.id, why)
    feed = single.checks.begin(live, resp.status, lower_headers(resp), action.start, restart=fresh)
    if feed is not None and not isinstance(feed, Feed):
        return feed
    live.resp = None  # connection 0 owns it now
    event = await _Driver(ctx, live, single, feed).run(first or 0, resp)
    if feed is not None and isinstance(event, M.BodyEnded):
        return await feed.ended(m.snap.total if m.snap.total is not None else m.snap.offset)
    return event


# How often a download short of connections asks the limiter again.
REFILL_SECONDS = 0.5


class _Driver:
    def __init__(self, ctx: Context, live: Live, single: Downloader, feed: Feed | None) -> None:
        self.ctx = ctx
        self.live = live
        self.checks = single.checks
        self.feed = feed
        self.m = live.machine
        self.busy: set[int] = set()
        self.tasks: dict[asyncio.Task[M.Event | None], int] = {}
        # The extra limiter slot each connection holds; None for the one the task's own
        # slot covers.
        self.slots: dict[asyncio.Task[M.Event | None], Slot | None] = {}
        self.origin = origin_key(live.machine.spec.url)

    def _launch(
        self, index: int, resp: aiohttp.ClientResponse | None, slot: Slot | None = None
    ) -> None:
        self.busy.add(index)
        task = asyncio.get_running_loop().create_task(
            self._worker(index, resp), name=f"bgtransfer-{self.live.row.id[:8]}-s{index}"
        )
        self.tasks[task] = index
        self.slots[task] = slot

    def _finished(self, task: asyncio.Task[M.Event | None]) -> None:
        self.busy.discard(self.tasks.pop(task))
        slot = self.slots.pop(task, None)
        if slot is not None:
            slot.release()

    def _connection(self) -> tuple[bool, Slot | None]:
        """May one more connection open, and with which extra slot."""
        if None not in self.slots.values():
            return True, None  # the task's own slot is free
        extra = self.ctx.limiter.try_extra(self.origin)
        return extra is not None, extra

    def _refill(self) -> None:
        m, width = self.m, self.m.spec.segments
        while len(self.tasks) < width:
            ok, slot = self._connection()
            if not ok:
                return
            nxt = next(
                (
                    i
                    for i, (_, pos, end) in enumerate(m.snap.segments)
                    if pos < end and i not in self.busy
                ),
                None,
            )
            if nxt is None:
                split = split_largest(m.snap.segments, self.busy)
                if split is None:
                    if slot is not None:
                        slot.release()
                    return
                segments, nxt = split
                self.ctx.apply(self.live, M.SegmentSplit(segments))
            self._launch(nxt, None, slot)

    async def run(self, first: int, resp: aiohttp.ClientResponse) -> M.Event:
        self._launch(first, resp)
        self._refill()
        watchdog: asyncio.Task[M.Event] | None = None
        if self.m.spec.low_speed_limit > 0:
            watchdog = asyncio.get_running_loop().create_task(self._watchdog())
        try:
            while self.tasks:
                waiting: set[asyncio.Task[Any]] = set(self.tasks)
                if watchdog is not None:
                    waiting.add(watchdog)
                done, _ = await asyncio.wait(
                    waiting, timeout=REFILL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is watchdog:
                        return watchdog.result()
                    self._finished(task)
                    event: M.Event | None = task.result()
                    if event is not None:
                        return event
                self._refill()
            return M.BodyEnded()
        finally:
            pending: list[asyncio.Task[Any]] = list(self.tasks)
            if watchdog is not None:
                pending.append(watchdog)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            for slot in self.slots.values():
                if slot is not None:
                    slot.release()
            self.slots.clear()
            self.tasks.clear()
            self.busy.clear()

    async def _watchdog(self) -> M.Event:
        """curl's --speed-limit over all connections of the task."""
        m = self.m
        error = await too_slow(
            lambda: m.snap.offset, m.spec.low_speed_limit, m.spec.low_speed_time, self.ctx.clock
        )
        return M.TransportFailed(error, slow=True)

    async def _worker(self, index: int, resp: aiohttp.ClientResponse | None) -> M.Event | None:
        m, live = self.m, self.live
        failures = 0
        attempt = live.attempt if resp is not None else None
        try:
            while True:
                _, pos, end = m.snap.segments[index]
                if pos >= end or m.snap.phase is not Phase.TRANSFERRING:
                    return None
                if resp is None:
                    attempt = self._new_attempt(index)
                    got = await self._request(index, attempt)
                    if isinstance(got, aiohttp.ClientResponse):
                        resp = got
                        outcome: M.Event | _Retry | None = await self._read(index, resp, attempt)
                    else:
                        outcome = got
                else:
                    outcome = await self._read(index, resp, attempt)
                resp = None
                if outcome is None:
                    self._end(attempt, live.attempt, f"segment {index} complete")
                    return None
                if not isinstance(outcome, _Retry):
                    self._end(attempt, live.attempt, f"segment {index}: {_describe(outcome)}")
                    return outcome
                self._end(attempt, live.attempt, f"segment {index}: {outcome.error.message}")
                if attempt is not None and attempt.bytes > 0:
                    failures = 0
                failures += 1
                if failures > SEGMENT_RETRIES:
                    err = outcome.error
                    err.message = f"{err.message} (segment {index}, {failures} tries in a row)"
                    err.args = (err.message,)
                    return M.TransportFailed(err)
                spec = m.spec
                delay = Backoff(spec.retry_wait, spec.max_retry_wait).delay(failures, m.rng())
                log.info("task %s: segment %d retry in %.2f s", live.row.id, index, delay)
                await self.ctx.sleep(delay)
        finally:
            if resp is not None:
                resp.close()

    def _new_attempt(self, index: int) -> Attempt:
        return self.ctx.history.open(self.live, self.m.url, self.m.snap.segments[index][1])

    def _end(self, attempt: Attempt | None, first: Attempt | None, outcome: str) -> None:
        # The first request's record belongs to the engine, which closes it with the task's
        # next event; the others go into the history with the next snapshot.
        if attempt is None or attempt is first:
            return
        self.ctx.history.close(self.live, attempt, outcome)

    async def _request(
        self, index: int, attempt: Attempt
    ) -> aiohttp.ClientResponse | M.Event | _Retry:
        ctx, m = self.ctx, self.m
        await ctx.pacing.wait_origin(self.live.origin)
        url, headers = m.segment_request(index)
        url, headers = segment_source(ctx, self.live, index, url, headers, attempt)  # mirrors
        headers = (*headers, *want_headers(headers, ranged=True))
        rt = m.spec.request_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=rt, sock_read=rt)
        try:
            resp = await ctx.http.get(
                url,
                headers=CIMultiDict(headers),
                allow_redirects=False,
                timeout=timeout,
                ssl=tls_for(m.spec),
            )
        except Exception as exc:
            failure = request_failure(exc, rt)
            if failure is None:
                raise
            await segment_answer(ctx, self.live, url, None, 0, {})  # mirrors: set it aside
            if not failure.retryable:
                return M.Failed(failure.error)
            return _Retry(failure.error)
        attempt.status = resp.status
        got = lower_headers(resp)
        ctx.pacing.heard(url, resp.status, got)
        # Mirrors and expired URLs (issue 17): a source dropped or a URL refreshed.
        elsewhere = await segment_answer(ctx, self.live, url, resp, resp.status, got)
        if elsewhere is not None:
            resp.close()
            return elsewhere if isinstance(elsewhere, M.Event) else _Retry(elsewhere)
        answer = check_segment_response(
            resp.status,
            got,
            m.snap.segments[index],
            m.snap.total,
            etag=m.snap.etag,
            last_modified=m.snap.last_modified,
        )
        if answer is SegmentAnswer.USE:
            return resp
        release_segment(ctx, self.live, resp)  # mirrors
        resp.close()
        status = resp.status
        if answer is SegmentAnswer.RETRY:
            return _Retry(HTTPStatusError(f"server answered {status}", status_code=status))
        if answer is SegmentAnswer.CHANGED:
            changed = validator_changed(m.snap.etag, m.snap.last_modified, got)
            return M.RestartRequired(f"segment {index}: the resource changed ({changed})")
        if answer is SegmentAnswer.RESTART:
            if status == 200:
                return M.RestartRequired(f"segment {index}: the resource changed")
            return M.RestartRequired(
                f"segment {index}: the server answered {status} with a Content-Range that "
                "does not match the request",
                distrust=True,
            )
        return M.TransportFailed(
            HTTPStatusError(
                f"server answered {status} for a segment of {redact(url)}; not retried",
                status_code=status,
            )
        )

    async def _read(
        self, index: int, resp: aiohttp.ClientResponse, attempt: Attempt | None
    ) -> M.Event | _Retry | None:
        ctx, m, live, part = self.ctx, self.m, self.live, self.live.part
        rt = m.spec.request_timeout
        check = body_check(resp.status, lower_headers(resp), m.snap.segments[index][1])
        try:
            async for chunk in resp.content.iter_chunked(ctx.pacing.read_size(live)):
                if m.snap.phase is not Phase.TRANSFERRING:
                    return None  # suspended or cancelled: the driver is being stopped
                _, pos, end = m.snap.segments[index]
                room = end - pos
                data = memoryview(chunk)[:room] if len(chunk) > room else chunk
                part.pwrite(data, pos)
                if attempt is not None:
                    attempt.bytes += len(data)
                # No await between pwrite and handle: the segments always match the file.
                actions = m.handle(M.SegmentWritten(index, len(data)), now=ctx.clock())
                if actions:
                    ctx.execute(live, actions)
                if check is not None:
                    check.update(data)
                if self.feed is not None:
                    self.feed.segment_wrote(len(data), m.snap.segments)
                # Every connection pays into the same buckets: the cap is the task's.
                await ctx.pacing.throttle(live, len(data))
                if pos + len(data) >= end:
                    return self._checked(index, check)
        except DestinationError as exc:
            return M.Interrupted(f"suspended: {exc.message}; resume() once it is fixed")
        except Exception as exc:
            failure = body_failure(exc, rt, f"segment {index}: connection lost")
            if failure is None:
                raise
            return _Retry(failure.error)
        finally:
            release_segment(ctx, live, resp)  # mirrors
            resp.close()
        _, pos, end = m.snap.segments[index]
        if pos < end:
            return _Retry(ReadError(f"segment {index}: body ended at byte {pos}, before {end}"))
        return self._checked(index, check)

    def _checked(self, index: int, check: BodyCheck | None) -> M.Event | None:
        """A segment's answer read whole must match its Content-Digest."""
        bad = check.mismatch() if check is not None else None
        if bad is None:
            return None
        return self.checks.bad_body(self.live, f"segment {index}: {bad}")


def _describe(event: M.Event) -> str:
    match event:
        case M.RestartRequired(reason=why) | M.Interrupted(reason=why):
            return why
        case M.TransportFailed(error=err) | M.Failed(error=err):
            return err.message
    return type(event).__name__
