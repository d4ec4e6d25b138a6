"""Where a download's requests go (issue 17): refreshed URLs and mirrors.

The plain and segmented drivers call in here from a few marked lines; the decisions are the
pure cores': :mod:`bgtransfer._protocol._signed` (when to refresh, what a hook may answer,
whether bytes survive a URL switch) and :mod:`bgtransfer._protocol._mirrors` (which source
serves the next request, which are set aside, which are dropped for serving other bytes).

Expired links
    A 401/403/410 on a task that already had an answer, or a URL whose own expiry
    (``X-Amz-Expires``…) is less than 30 s away, calls the task's refresh hook; its new URL
    and headers replace the spec's for every later request, on record in the snapshot
    (``refreshed_url``), so a restarted daemon goes on with them. The request is then sent
    again: under ``If-Range`` the server itself proves the representation is the same (a
    206 keeps the bytes) or not (a 200 starts the file over). With the caller's sha256, a
    new URL whose validator differs is asked without ``If-Range`` and its bytes are kept
    when the length is the same (``Keep.KEEP_VERIFY``: the sha256 checks the whole file).

Mirrors
    ``Spec.urls`` names every source of the one file. Each request of the task (and each
    segment's) goes to :meth:`MirrorSet.pick`'s source; a source's first answer is checked
    against the reference (length, strong validator, digest) and a source that serves other
    bytes is dropped before any of its bytes is written. A source that errors is set aside
    for a backoff and the request goes at once to the next; every drop and set-aside is a
    row of the attempt history.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from bgtransfer._engine._context import Context
from bgtransfer._engine._live import Live
from bgtransfer._engine._sourcestate import (
    TaskSources,
    has_sources,
    set_url,
    shown,
    sources_of,
)
from bgtransfer._exceptions import (
    IntegrityError,
    NetworkError,
    ReadError,
    RefreshFailed,
    SourceDropped,
    TransferError,
)
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._events import FinalResponse, UploadEvent
from bgtransfer._protocol._ranges import parse_retry_after
from bgtransfer._protocol._redirects import REDIRECT_STATUS
from bgtransfer._protocol._request import request_headers, segment_headers
from bgtransfer._protocol._retry import RETRYABLE_STATUS
from bgtransfer._protocol._signed import (
    RefreshAction,
)
from bgtransfer._store._base import Attempt

__all__ = [
    "has_sources",
    "release_segment",
    "request_via_sources",
    "segment_answer",
    "segment_source",
    "upload_with_refresh",
]

Send = Callable[[Live, M.SendRequest], Awaitable[M.Event]]

# Requests one call may make while sources are dropped, set aside or refreshed in turn.
_MAX_TRIES = 16


async def request_via_sources(
    ctx: Context, live: Live, action: M.SendRequest, send: Send
) -> M.Event:
    """``send(action)`` with the task's sources: a refresh before or after the request, the
    mirror that serves it, an answer of a lying source dropped, an erroring one set aside."""
    src = sources_of(ctx, live)
    m = live.machine
    first_hop = action.url in (m.spec.url, live.row.spec.url)
    for _ in range(_MAX_TRIES):
        if first_hop and src.due(live):
            failed = await src.refresh(ctx, live, None, "the URL was about to expire")
            if failed is not None:
                return M.Failed(failed)
        if first_hop:
            url = m.spec.url
            if src.mirrors is not None:
                picked = src.pick(live)
                src.flush_mirror_history(ctx, live)
                if picked is None:
                    return M.Failed(_all_dropped(live, src))
                url = picked
            base = request_headers(m.spec, m.snap, url)
            action = M.SendRequest(url, src.headers_for(live, url, base), action.time_left)
            set_url(live, url)
        event = await send(live, action)
        again = await _judge(ctx, live, src, action, event)
        if again is None:
            return event
        if isinstance(again, M.Event):
            return again
        first_hop = True  # a refreshed URL or another source: from the task's URL again
    # Sources dropped or set aside one after the other: the machine's backoff, then again.
    return M.TransportFailed(
        NetworkError(f"no source gave a usable answer in {_MAX_TRIES} requests")
    )


async def _judge(
    ctx: Context, live: Live, src: TaskSources, action: M.SendRequest, event: M.Event
) -> M.Event | bool | None:
    """None: hand ``event`` to the machine; True: ask again; an event: hand that instead."""
    url, m = action.url, live.machine
    if isinstance(event, M.TransportFailed):
        if src.aside(url, event.error.message):
            src.end_attempt(ctx, live, f"{event.error.message}; trying another source")
            src.flush_mirror_history(ctx, live)
            return True
        src.flush_mirror_history(ctx, live)
        return None
    if not isinstance(event, M.Response):
        return None
    status, headers = event.status, event.headers
    if src.refreshed is not None and status not in REDIRECT_STATUS:
        src.note(ctx, live, url, src.outcome_of_refresh(live, headers, status))
    verdict = src.verdict(live, status)
    if verdict is RefreshAction.REFRESH:
        src.end_attempt(ctx, live, f"server answered {status}: the URL expired; refreshing it")
        failed = await src.refresh(ctx, live, status, f"the server answered {status}")
        return True if failed is None else M.Failed(failed)
    if verdict is RefreshAction.EXHAUSTED:
        src.end_attempt(ctx, live, f"server answered {status} after {m.snap.refreshes} refreshes")
        return M.Failed(
            RefreshFailed(
                f"server answered {status} for {shown(url)} although the URL was refreshed "
                f"{m.snap.refreshes} times ({src.in_a_row} in a row with no byte between): "
                "not refreshed again",
                task_id=live.row.id,
                status_code=status,
            )
        )
    if src.mirrors is None:
        return None
    if status in RETRYABLE_STATUS or (400 <= status < 500 and len(src.mirrors.live) > 1):
        wait = parse_retry_after(headers.get("retry-after"), event.wall_time)
        why = f"it answered {status}"
        if status not in RETRYABLE_STATUS:
            src.mirrors.drop(url, why, time.monotonic())
            again = bool(src.mirrors.live)
        else:
            again = src.aside(url, why, wait)
        src.flush_mirror_history(ctx, live)
        if again:
            src.end_attempt(ctx, live, f"server answered {status}; trying another source")
            return True
        return None
    dropped = src.observe(live, url, status, headers)
    src.flush_mirror_history(ctx, live)
    if dropped is not None:
        src.end_attempt(ctx, live, f"source dropped: {dropped}")
        return True if src.mirrors.live else M.Failed(_all_dropped(live, src))
    return _as_reference(live, src, url, event)


def _as_reference(live: Live, src: TaskSources, url: str, event: M.Response) -> M.Response | None:
    """An accepted source's 206 under another validator (a checksum will judge the bytes):
    the machine sees the reference's, so it appends instead of starting over."""
    snap = live.machine.snap
    if snap.offset == 0 or event.status != 206 or event.headers.get("etag") == snap.etag:
        return None
    headers = dict(event.headers)
    for name, value in (("etag", snap.etag), ("last-modified", snap.last_modified)):
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return dataclasses.replace(event, headers=headers)


def _all_dropped(live: Live, src: TaskSources) -> TransferError:
    dropped = src.mirrors.dropped if src.mirrors is not None else {}
    why = "; ".join(f"{shown(u)}: {r}" for u, r in dropped.items())
    return SourceDropped(f"every source was dropped ({why})", task_id=live.row.id)


# --- segments --------------------------------------------------------------------------------


def segment_source(
    ctx: Context,
    live: Live,
    index: int,
    url: str,
    headers: tuple[tuple[str, str], ...],
    attempt: Attempt,
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The source and headers for segment ``index``'s request (the machine's, without
    mirrors; ``attempt``, its history row, names the source); the source counts as busy
    until :func:`release_segment`."""
    if not has_sources(ctx, live):
        return url, headers
    src = sources_of(ctx, live)
    if src.mirrors is None:
        return url, headers
    picked = src.mirrors.pick(time.monotonic())
    if picked is None:
        return url, headers  # every source busy or resting: the primary
    m = live.machine
    base = segment_headers(m.spec, m.snap, picked, index)
    attempt.url = shown(picked)
    return picked, src.headers_for(live, picked, base)


async def segment_answer(
    ctx: Context,
    live: Live,
    url: str,
    resp: aiohttp.ClientResponse | None,
    status: int,
    headers: Mapping[str, str],
) -> TransferError | M.Event | None:
    """Check a segment's answer from ``url`` (``resp`` None: the request failed): an error
    when the segment must be asked again (its source was dropped or set aside, or the URL
    was refreshed), an event that ends the download (a refresh failed), or None."""
    if not has_sources(ctx, live):
        return None
    src = sources_of(ctx, live)
    if resp is not None and src.hook is not None:
        refreshed = await _refresh_for_segment(ctx, live, src, url, status)
        if refreshed is not None:
            return refreshed
    if src.mirrors is None or url not in src.mirrors.live + list(src.mirrors.dropped):
        return None
    err: TransferError | None = None
    if resp is None or status in RETRYABLE_STATUS:
        src.mirrors.release(url)
        src.aside(url, "it failed a segment" if resp is None else f"it answered {status}")
        err = IntegrityError(f"{shown(url)} set aside")
    elif 400 <= status < 500 and len(src.mirrors.live) > 1:
        src.mirrors.release(url)
        src.mirrors.drop(url, f"it answered {status}", time.monotonic())
        err = IntegrityError(f"{shown(url)} dropped: it answered {status}")
    else:
        dropped = src.observe(live, url, status, headers)
        if dropped is not None:
            src.mirrors.release(url)
            err = IntegrityError(f"{shown(url)} dropped: {dropped}")
        else:
            src.bound[id(resp)] = url
    src.flush_mirror_history(ctx, live)
    return err


async def _refresh_for_segment(
    ctx: Context, live: Live, src: TaskSources, url: str, status: int
) -> TransferError | M.Event | None:
    m = live.machine
    verdict = src.verdict(live, status)
    if verdict is RefreshAction.NONE:
        return None
    again = ReadError(f"segment: the server answered {status}; the URL was refreshed")
    async with src.lock:  # one refresh for all the connections refused together
        if m.spec.url != url:
            return again  # another connection refreshed it meanwhile
        verdict = src.verdict(live, status)
        if verdict is RefreshAction.EXHAUSTED:
            return M.Failed(
                RefreshFailed(
                    f"server answered {status} for a segment of {shown(url)} although the "
                    f"URL was refreshed {m.snap.refreshes} times: not refreshed again",
                    task_id=live.row.id,
                    status_code=status,
                )
            )
        failed = await src.refresh(ctx, live, status, f"the server answered {status}")
        if failed is not None:
            return M.Failed(failed)
        src.refreshed = None  # the segments' own checks judge the new URL's answers
        src.note(ctx, live, m.spec.url, f"URL refreshed (a segment got {status})")
        set_url(live, m.spec.url)
    return again


def release_segment(ctx: Context, live: Live, resp: aiohttp.ClientResponse) -> None:
    """A segment's response is done with: its source is free for another."""
    if not has_sources(ctx, live):
        return
    src = sources_of(ctx, live)
    if src.mirrors is None:
        return
    url = src.bound.pop(id(resp), None)
    if url is not None:
        src.mirrors.release(url)


# --- uploads ---------------------------------------------------------------------------------


async def upload_with_refresh(
    ctx: Context, live: Live, exchange: Callable[[Live], Awaitable[M.Event | UploadEvent]]
) -> M.Event | UploadEvent:
    """An upload's exchange with its refresh hook: a new URL or new headers (an expired
    bearer token) when the server refuses a task it had let in, or before the URL expires.
    A resumable upload then asks the server its offset again (tus/IETF HEAD)."""
    if not has_sources(ctx, live):
        return await exchange(live)
    src = sources_of(ctx, live)
    for _ in range(_MAX_TRIES):
        if src.due(live):
            failed = await src.refresh(ctx, live, None, "the URL was about to expire")
            if failed is not None:
                return M.Failed(failed)
        event = await exchange(live)
        if not isinstance(event, FinalResponse):
            return event
        status = event.status
        verdict = src.verdict(live, status)
        if verdict is RefreshAction.NONE:
            return event
        if verdict is RefreshAction.EXHAUSTED:
            return M.Failed(
                RefreshFailed(
                    f"server answered {status} for {shown(live.machine.spec.url)} although "
                    f"the URL was refreshed {live.machine.snap.refreshes} times: not "
                    "refreshed again",
                    task_id=live.row.id,
                    status_code=status,
                )
            )
        failed = await src.refresh(ctx, live, status, f"the server answered {status}")
        if failed is not None:
            return M.Failed(failed)
        src.refreshed = None
        src.note(ctx, live, live.machine.spec.url, f"URL refreshed (the server answered {status})")
    return M.TransportFailed(NetworkError(f"no usable answer in {_MAX_TRIES} refreshed requests"))
