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

import asyncio
import dataclasses
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from bgtransfer._engine._context import Context
from bgtransfer._engine._live import Live
from bgtransfer._engine._refresh import call_hook, run_command
from bgtransfer._exceptions import (
    IntegrityError,
    NetworkError,
    ReadError,
    RefreshFailed,
    SourceDropped,
    TransferError,
)
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._digest import Checksum, parse_digest_field
from bgtransfer._protocol._events import FinalResponse, UploadEvent
from bgtransfer._protocol._mirrors import MirrorSet, Observed
from bgtransfer._protocol._ranges import parse_content_range, parse_retry_after
from bgtransfer._protocol._redirects import REDIRECT_STATUS
from bgtransfer._protocol._request import request_headers, segment_headers
from bgtransfer._protocol._retry import RETRYABLE_STATUS
from bgtransfer._protocol._signed import (
    Keep,
    Refresh,
    RefreshAction,
    Representation,
    keep_bytes,
    redact_signature,
    refresh_due,
    refresh_on_status,
    signed_url_expiry,
)
from bgtransfer._redact import redact
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


def has_sources(ctx: Context, live: Live) -> bool:
    """Whether the task has mirrors or a refresh hook or a refreshed URL (else the plain
    path is untouched)."""
    spec = live.row.spec
    return (
        len(spec.urls) > 1
        or spec.refresh is not None
        or live.row.id in ctx.refresh_hooks
        or live.machine.snap.refreshed_url is not None  # refreshed before a restart
    )


def _shown(url: str) -> str:
    return redact(redact_signature(url))


class _TaskSources:
    """What one running task remembers about its sources between requests."""

    def __init__(self, ctx: Context, live: Live) -> None:
        m, snap = live.machine, live.machine.snap
        self.task_id = live.row.id
        if snap.refreshed_url is not None:
            # A refresh before a restart: its URL and headers, not the submitted ones.
            m.spec = dataclasses.replace(
                m.spec, url=snap.refreshed_url, headers=snap.refreshed_headers
            )
        self.hook: Any = ctx.refresh_hooks.get(live.row.id) or m.spec.refresh
        spec = m.spec
        self.mirrors: MirrorSet | None = None
        if len(spec.urls) > 1:
            sums = [Checksum("sha256", bytes.fromhex(spec.sha256))] if spec.sha256 else []
            self.mirrors = MirrorSet(spec.urls, checksums=sums)
            if snap.total is not None and snap.offset > 0:
                # Bytes from before a restart: what they are is the reference for every
                # source (the first URL stands for the one that served them).
                self.mirrors.observe(spec.urls[0], Observed(snap.total, snap.etag))
        self.in_a_row = 0
        self.offset_at_refresh = -1
        self.failures_seen = snap.failures
        self.last_source: str | None = None
        self.refreshed: tuple[str, Representation] | None = None  # (why, old representation)
        self.bound: dict[int, str] = {}  # id(response) -> its source, while it is read
        self.lock = asyncio.Lock()  # segments refused together refresh once

    # --- history ---------------------------------------------------------------------------

    def note(self, ctx: Context, live: Live, url: str, outcome: str) -> None:
        """A row of the attempt history that is not a request of its own."""
        now = time.time()
        row = Attempt(now, _shown(url), None, key=os.urandom(8).hex())
        ctx.history.close(live, row, outcome)

    def end_attempt(self, ctx: Context, live: Live, outcome: str) -> None:
        if live.resp is not None:
            live.resp.close()
            live.resp = None
        attempt, live.attempt = live.attempt, None
        if attempt is not None:
            ctx.history.close(live, attempt, outcome)

    def flush_mirror_history(self, ctx: Context, live: Live) -> None:
        if self.mirrors is None:
            return
        for ev in self.mirrors.history:
            if ev.kind != "accepted":
                self.note(ctx, live, ev.url, f"mirror {ev.kind}: {ev.reason}")
        self.mirrors.history.clear()

    # --- refresh ---------------------------------------------------------------------------

    def expiry(self, live: Live) -> float | None:
        snap = live.machine.snap
        found = signed_url_expiry(live.machine.spec.url)
        if snap.refresh_expires is not None and snap.refreshed_url == live.machine.spec.url:
            found = snap.refresh_expires if found is None else min(found, snap.refresh_expires)
        return found

    def due(self, live: Live) -> bool:
        """A refresh before the request: the URL dies within the margin (and the bound on
        refreshes is not reached: then the server's answer decides)."""
        if self.hook is None or not refresh_due(self.expiry(live), time.time()):
            return False
        snap = live.machine.snap
        if snap.offset != self.offset_at_refresh:
            self.in_a_row = 0
        verdict = refresh_on_status(
            401,
            has_hook=True,
            had_response=True,
            refreshes=snap.refreshes,
            refreshes_in_a_row=self.in_a_row,
        )
        return verdict is RefreshAction.REFRESH

    def verdict(self, live: Live, status: int) -> RefreshAction:
        m = live.machine
        snap = m.snap
        if snap.offset != self.offset_at_refresh:
            self.in_a_row = 0
        expiry = self.expiry(live)
        return refresh_on_status(
            status,
            has_hook=self.hook is not None,
            # Bytes, a first answer, or (uploads) a server that created the upload.
            had_response=snap.offset > 0
            or snap.response_status is not None
            or snap.upload_url is not None,
            url_expired=expiry is not None and time.time() >= expiry,
            refreshes=snap.refreshes,
            refreshes_in_a_row=self.in_a_row,
        )

    async def refresh(
        self, ctx: Context, live: Live, status: int | None, why: str
    ) -> TransferError | None:
        """Ask the hook for a new URL and make it the task's; the error when it gave none."""
        m = live.machine
        info = {"task_id": self.task_id, "url": m.spec.url, "status": status, "reason": why}
        try:
            if callable(self.hook):
                got = await call_hook(self.hook, info)
            else:
                got = await run_command(tuple(self.hook), info)
        except RefreshFailed as exc:
            self.note(ctx, live, m.spec.url, f"refresh failed: {exc.message}")
            exc.task_id = self.task_id
            return exc
        self.apply(ctx, live, got, why)
        return None

    def apply(self, ctx: Context, live: Live, got: Refresh, why: str) -> None:
        m = live.machine
        snap = m.snap
        names = {k.lower() for k, _ in got.headers}
        headers = (*((k, v) for k, v in m.spec.headers if k.lower() not in names), *got.headers)
        old = Representation(snap.total, snap.etag)
        m.spec = dataclasses.replace(m.spec, url=got.url, headers=headers)
        snap.refreshed_url, snap.refreshed_headers = got.url, headers
        snap.refresh_expires = got.expires
        snap.refreshes += 1
        self.in_a_row += 1
        self.offset_at_refresh = snap.offset
        self.refreshed = (why, old)
        ctx.execute(live, [M.Persist()])  # the new URL on record before it is used

    def outcome_of_refresh(self, live: Live, headers: Mapping[str, str], status: int) -> str:
        """How the first answer from a refreshed URL treats the bytes we have (for the
        history): kept, to be checked by the sha256, or started over."""
        assert self.refreshed is not None
        why, old = self.refreshed
        self.refreshed = None
        snap = live.machine.snap
        if not 200 <= status < 300:
            return f"URL refreshed ({why}); the new URL answered {status}"
        if snap.offset == 0:
            return f"URL refreshed ({why}); nothing downloaded yet"
        new = _representation(status, headers)
        if status == 200 and parse_content_range(headers.get("content-range")) is None:
            keep, reason = Keep.RESTART, "the new URL sent the whole file (If-Range failed)"
        else:
            keep, reason = keep_bytes(old, new, caller_sha256=live.machine.spec.sha256 is not None)
        if keep is Keep.RESTART:
            return f"URL refreshed ({why}); restarting from 0: {reason}"
        if keep is Keep.KEEP_VERIFY and status == 206:
            # From now on the new URL is the source: its validators are the ones to send.
            snap.etag, snap.last_modified = new.etag, headers.get("last-modified")
        return f"URL refreshed ({why}); {snap.offset} bytes kept: {reason}"

    # --- mirrors ---------------------------------------------------------------------------

    def pick(self, live: Live) -> str | None:
        assert self.mirrors is not None
        now = time.monotonic()
        m = live.machine
        last = self.last_source
        if last is not None and m.snap.failures > self.failures_seen and last in self.mirrors.live:
            # The last request's body failed (or was too slow): that source rests a while.
            self.mirrors.failed(last, now, "its last transfer failed")
        self.failures_seen = m.snap.failures
        url = self.mirrors.pick(now)
        if url is None:
            alive = self.mirrors.live
            if not alive:
                return None
            # Every source rests: the one back soonest (the machine's backoff came first).
            url = alive[0]
        else:
            self.mirrors.release(url)  # one connection: nothing to balance
        self.last_source = url
        return url

    def headers_for(self, live: Live, url: str, base: tuple[tuple[str, str], ...]) -> Any:
        """Another source's request drops If-Range when a checksum will judge the bytes:
        mirrors rarely share ETags, and their 206 is checked by length and the sha256."""
        m = live.machine
        if not m.spec.sha256:
            return base
        if self.refreshed is None and (self.mirrors is None or url == m.spec.urls[0]):
            return base
        return tuple((k, v) for k, v in base if k.lower() != "if-range")

    def observe(self, live: Live, url: str, status: int, headers: Mapping[str, str]) -> str | None:
        """The reason ``url`` is dropped for this answer, or None when its bytes may be used."""
        if self.mirrors is None or not 200 <= status < 300:
            return None
        rep = _representation(status, headers)
        seen = Observed(rep.length, rep.etag, rep.digests)
        reason = self.mirrors.observe(url, seen, time.monotonic())
        if reason is None:
            self.mirrors.succeeded(url)
        return reason

    def aside(self, url: str, why: str, retry_after: float | None = None) -> bool:
        """Set ``url`` aside; whether another source may be asked at once."""
        if self.mirrors is None:
            return False
        now = time.monotonic()
        self.mirrors.failed(url, now, why, retry_after)
        probe = self.mirrors.pick(now)
        if probe is None:
            return False
        self.mirrors.release(probe)
        return True


def _representation(status: int, headers: Mapping[str, str]) -> Representation:
    cr = parse_content_range(headers.get("content-range"))
    if cr is not None and status == 206:
        length = cr.total
    else:
        raw = (headers.get("content-length") or "").strip()
        length = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None
    digests = parse_digest_field(headers.get("repr-digest"))
    return Representation(length, headers.get("etag"), digests)


_STATE: weakref.WeakKeyDictionary[Live, _TaskSources] = weakref.WeakKeyDictionary()


def _of(ctx: Context, live: Live) -> _TaskSources:
    src = _STATE.get(live)
    if src is None:
        src = _STATE[live] = _TaskSources(ctx, live)
    return src


def _set_url(live: Live, url: str) -> None:
    # The machine resolves a relative Location against the URL it believes it asked; a
    # request sent to a mirror or a refreshed URL must be that URL.
    live.machine._url = url


async def request_via_sources(
    ctx: Context, live: Live, action: M.SendRequest, send: Send
) -> M.Event:
    """``send(action)`` with the task's sources: a refresh before or after the request, the
    mirror that serves it, an answer of a lying source dropped, an erroring one set aside."""
    src = _of(ctx, live)
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
            _set_url(live, url)
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
    ctx: Context, live: Live, src: _TaskSources, action: M.SendRequest, event: M.Event
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
                f"server answered {status} for {_shown(url)} although the URL was refreshed "
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


def _as_reference(live: Live, src: _TaskSources, url: str, event: M.Response) -> M.Response | None:
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


def _all_dropped(live: Live, src: _TaskSources) -> TransferError:
    dropped = src.mirrors.dropped if src.mirrors is not None else {}
    why = "; ".join(f"{_shown(u)}: {r}" for u, r in dropped.items())
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
    src = _of(ctx, live)
    if src.mirrors is None:
        return url, headers
    picked = src.mirrors.pick(time.monotonic())
    if picked is None:
        return url, headers  # every source busy or resting: the primary
    m = live.machine
    base = segment_headers(m.spec, m.snap, picked, index)
    attempt.url = _shown(picked)
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
    src = _of(ctx, live)
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
        err = IntegrityError(f"{_shown(url)} set aside")
    elif 400 <= status < 500 and len(src.mirrors.live) > 1:
        src.mirrors.release(url)
        src.mirrors.drop(url, f"it answered {status}", time.monotonic())
        err = IntegrityError(f"{_shown(url)} dropped: it answered {status}")
    else:
        dropped = src.observe(live, url, status, headers)
        if dropped is not None:
            src.mirrors.release(url)
            err = IntegrityError(f"{_shown(url)} dropped: {dropped}")
        else:
            src.bound[id(resp)] = url
    src.flush_mirror_history(ctx, live)
    return err


async def _refresh_for_segment(
    ctx: Context, live: Live, src: _TaskSources, url: str, status: int
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
                    f"server answered {status} for a segment of {_shown(url)} although the "
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
        _set_url(live, m.spec.url)
    return again


def release_segment(ctx: Context, live: Live, resp: aiohttp.ClientResponse) -> None:
    """A segment's response is done with: its source is free for another."""
    src = _STATE.get(live)
    if src is None or src.mirrors is None:
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
    src = _of(ctx, live)
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
                    f"server answered {status} for {_shown(live.machine.spec.url)} although "
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
