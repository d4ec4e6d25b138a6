"""Fetching bad pieces again, alone (issue 17: a bad piece costs one piece of traffic).

Each bad piece is asked for with ``Range: bytes=a-b`` and the file's If-Range; the answer
must be a 206 of the same version for exactly that range (as a segment's, see
:func:`check_segment_response`). Its bytes are checked against the piece's hash *before*
they are written, so bad bytes never replace bad bytes, then read back from the file and
checked again. Each piece gets ``PIECE_TRIES`` fetches over the task's life; then the task
fails with :class:`IntegrityError` naming the piece, its range, expected and got.
"""

from __future__ import annotations

import logging
import os

import aiohttp
from multidict import CIMultiDict

from bgtransfer._engine._context import Context
from bgtransfer._engine._http import lower_headers, request_failure
from bgtransfer._engine._live import Live
from bgtransfer._exceptions import HTTPStatusError, IntegrityError, TransferError
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._digest import Hashers
from bgtransfer._protocol._pieces import PiecePlan
from bgtransfer._protocol._request import if_range, request_headers
from bgtransfer._protocol._retry import Backoff
from bgtransfer._protocol._segments import SegmentAnswer, check_segment_response
from bgtransfer._redact import redact

__all__ = ["PIECE_TRIES", "repair"]

log = logging.getLogger("bgtransfer")

PIECE_TRIES = 3  # fetches of one piece after the first, over the task's life


class _Again:
    """This fetch did not give a good piece; another may."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _digest(plan: PiecePlan, data: bytes) -> bytes:
    h = Hashers([plan.algorithm])
    h.update(data)
    return h.digests()[plan.algorithm]


async def repair(
    ctx: Context, live: Live, plan: PiecePlan, bad: list[int], tries: dict[int, int]
) -> M.Event | None:
    """Fetch each of the ``bad`` pieces again until it is good; None once all are, else the
    event that ends (``Failed``) or restarts (the resource changed) the download."""
    m = live.machine
    log.warning("task %s: %d bad piece(s) %s: fetching them again", live.row.id, len(bad),
                bad[:10])  # fmt: skip
    for index in bad:
        while True:
            tries[index] = n = tries.get(index, 0) + 1
            got = await _fetch(ctx, live, plan, index)
            if got is None:
                break
            if not isinstance(got, _Again):
                return got
            if n >= PIECE_TRIES:
                start, end = plan.piece_range(index)
                return M.Failed(
                    IntegrityError(
                        f"piece {index} (bytes {start}-{end - 1}) is still bad after {n} "
                        f"fetches: {got.reason}"
                    )
                )
            spec = m.spec
            await ctx.sleep(Backoff(spec.retry_wait, spec.max_retry_wait).delay(n, m.rng()))
    return None


async def _fetch(ctx: Context, live: Live, plan: PiecePlan, index: int) -> M.Event | _Again | None:
    m = live.machine
    start, end = plan.piece_range(index)
    url = m.url
    headers = [
        (k, v)
        for k, v in request_headers(m.spec, m.snap, url)
        if k.lower() not in ("range", "if-range")
    ]
    headers.append(("Range", f"bytes={start}-{end - 1}"))
    validator = if_range(m.snap)
    if validator is not None:
        headers.append(("If-Range", validator))
    attempt = ctx.history.open(live, url, start)
    rt = m.spec.request_timeout
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=rt, sock_read=rt)
    outcome = f"piece {index} fetched again"
    try:
        try:
            resp = await ctx.http.get(
                url, headers=CIMultiDict(headers), allow_redirects=False, timeout=timeout
            )
        except Exception as exc:
            failure = request_failure(exc, rt)
            if failure is None:
                raise
            outcome = f"piece {index}: {failure.error.message}"
            return _Again(failure.error.message) if failure.retryable else M.Failed(failure.error)
        attempt.status = resp.status
        got = await _read(resp, m, index, start, end)
        if isinstance(got, _Again | M.RestartRequired | M.Failed):
            outcome = f"piece {index}: {_why(got)}"
            return got
        attempt.bytes = len(got)
        want = plan.hashes[index]
        if not plan.verify(index, _digest(plan, got)):
            outcome = f"piece {index}: bad again"
            return _Again(f"{plan.algorithm} expected {want.hex()}, got {_digest(plan, got).hex()}")
        live.part.pwrite(got, start)
        if not plan.verify_bytes(index, _read_back(live, start, end - start)):
            outcome = f"piece {index}: the file does not hold what was written"
            return M.Failed(IntegrityError(outcome))
        return None
    finally:
        ctx.history.close(live, attempt, outcome)


def _read_back(live: Live, start: int, size: int) -> bytes:
    """What the file holds there, through a descriptor of the same inode (the task's is
    write-only)."""
    mine = os.fstat(live.part.fd)
    fd = os.open(live.part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            return b""  # not the task's file: it cannot vouch for the piece
        return os.pread(fd, size, start)
    finally:
        os.close(fd)


def _why(got: _Again | M.RestartRequired | M.Failed) -> str:
    if isinstance(got, _Again | M.RestartRequired):
        return got.reason
    return got.error.message


async def _read(
    resp: aiohttp.ClientResponse, m: M.TransferMachine, index: int, start: int, end: int
) -> bytes | _Again | M.RestartRequired | M.Failed:
    """The piece's bytes from a checked answer (exactly ``end - start`` of them)."""
    try:
        answer = check_segment_response(
            resp.status,
            lower_headers(resp),
            (start, start, end),
            m.snap.total,
            etag=m.snap.etag,
            last_modified=m.snap.last_modified,
        )
        if answer is SegmentAnswer.RETRY:
            return _Again(f"server answered {resp.status}")
        if answer in (SegmentAnswer.RESTART, SegmentAnswer.CHANGED):
            return M.RestartRequired(f"piece {index}: the resource changed")
        if answer is not SegmentAnswer.USE:
            return M.Failed(
                HTTPStatusError(
                    f"server answered {resp.status} for piece {index} of {redact(m.url)}",
                    status_code=resp.status,
                )
            )
        data = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 20):
            data += chunk
            if len(data) >= end - start:
                break
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return _Again(f"piece {index}: {str(exc) or type(exc).__name__}")
    except TransferError as exc:
        return _Again(exc.message)
    finally:
        resp.close()
    if len(data) < end - start:
        return _Again(f"piece {index}: body ended after {len(data)} of {end - start} bytes")
    return bytes(data[: end - start])
