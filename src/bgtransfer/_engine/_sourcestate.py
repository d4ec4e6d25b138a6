"""What one running download or upload remembers about its sources (issue 17): the refresh
hook and its bounds, the mirror set, the representation a refresh started from. The
request paths that use it are in :mod:`._sources`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any

from bgtransfer._engine._context import Context
from bgtransfer._engine._live import Live
from bgtransfer._engine._refresh import call_hook, run_command
from bgtransfer._exceptions import (
    RefreshFailed,
    TransferError,
)
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._digest import Checksum, parse_digest_field
from bgtransfer._protocol._mirrors import MirrorSet, Observed
from bgtransfer._protocol._ranges import parse_content_range
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

__all__ = ["TaskSources", "has_sources", "set_url", "shown", "sources_of"]


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


def shown(url: str) -> str:
    return redact(redact_signature(url))


class TaskSources:
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
        row = Attempt(now, shown(url), None, key=os.urandom(8).hex())
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


_STATE: weakref.WeakKeyDictionary[Live, TaskSources] = weakref.WeakKeyDictionary()


def sources_of(ctx: Context, live: Live) -> TaskSources:
    src = _STATE.get(live)
    if src is None:
        src = _STATE[live] = TaskSources(ctx, live)
    return src


def set_url(live: Live, url: str) -> None:
    # The machine resolves a relative Location against the URL it believes it asked; a
    # request sent to a mirror or a refreshed URL must be that URL.
    live.machine._url = url
