"""``/r/<name>`` and ``/gen/<size>``: ranges, validators, and the lies the knobs ask for.

Correct behaviour (no knobs)
----------------------------
Single ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` gives 206 with
Content-Range; multi-range or unparsable Range is ignored (200); a start at or
past the end gives 416 with ``Content-Range: bytes */size``. ``If-Range`` lets
the Range through only if it equals the current strong ETag exactly (a weak
ETag never matches) or the Last-Modified string exactly; otherwise 200 with the
full body. Keep-alive, pipelining, ``Connection: close``, HEAD and request
bodies (Content-Length or chunked, read and discarded) are supported.


Conditional GET (always on, RFC 9110 section 13): ``If-None-Match`` matching the current
ETag (weak comparison, or ``*``) gives ``304 Not Modified`` with the ETag and no body;
without it, ``If-Modified-Since`` not older than Last-Modified does the same.


See :mod:`bgtransfer.testing._knobs` for the knobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from bgtransfer.testing._bodies import (
    FIXED_LAST_MODIFIED,
    PIECE,
    Body,
    BytesBody,
    GenBody,
    LyingBody,
    Representation,
    auto_etag,
    gzip_body,
    shift_date,
    tagged_etag,
    versioned_etag,
    xor_table,
)
from bgtransfer.testing._data import parse_size
from bgtransfer.testing._http import (
    CHUNK,
    DIGITS,
    HttpError,
    Request,
    Reset,
    flush,
    head_bytes,
    http_date,
    send_simple,
    send_text,
    wait_delivered,
)
from bgtransfer.testing._integrity import (
    DIGEST_ALGORITHMS,
    amz_checksum,
    body_digests,
    digest_field,
    goog_hash,
    sha256_hex,
    wanted,
)
from bgtransfer.testing._knobs import Knobs, error_page
from bgtransfer.testing._state import State


def not_modified(headers: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
    """RFC 9110 13.1.2 / 13.1.3: If-None-Match wins; If-Modified-Since only without it."""
    inm = headers.get("if-none-match")
    if inm is not None:
        if etag is None:
            return False
        tags = [t.strip() for t in inm.split(",")]
        bare = etag.removeprefix("W/")
        return "*" in tags or any(t.removeprefix("W/") == bare for t in tags)
    ims = headers.get("if-modified-since")
    if ims is None or last_modified is None:
        return False
    try:
        old = email.utils.parsedate_to_datetime(last_modified)
        return bool(old <= email.utils.parsedate_to_datetime(ims))
    except (TypeError, ValueError):
        return False


UNSATISFIABLE: Final = "unsatisfiable"


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(start, end_exclusive), UNSATISFIABLE, or None when the header is to be ignored."""
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash:
        return None
    if first == "":
        if not DIGITS.match(last):
            return None
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size)
    if not DIGITS.match(first) or (last and not DIGITS.match(last)):
        return None
    start = int(first)
    end = size
    if last:
        if int(last) < start:
            return None
        end = min(int(last) + 1, size)
    if start >= size:
        return UNSATISFIABLE
    return (start, end)


def if_range_ok(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
    if if_range is None:
        return True
    if etag is not None and not etag.startswith("W/") and if_range == etag:
        return True
    return last_modified is not None and if_range == last_modified


@dataclass
class View:
    """The representation as this request's knobs present it."""

    body: Body
    etag: str | None
    last_modified: str | None

    @property
    def size(self) -> int:
        return self.body.size


@dataclass
class Plan:
    """Which bytes one answer carries and how it labels them."""

    status: int
    start: int
    end: int
    content_range: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_range(req: Request, knobs: Knobs, view: View) -> Plan | None:
    """The status and byte range to answer; None for 416."""
    size = view.size
    if knobs.full_as_206:
        return Plan(206, 0, size, f"bytes 0-{size - 1}/{size}" if size else f"bytes */{size}")
    range_header = req.headers.get("range")
    if range_header is None or knobs.ignore_range:
        return Plan(200, 0, size)
    if not knobs.ignore_if_range and not if_range_ok(
        req.headers.get("if-range"), view.etag, view.last_modified
    ):
        return Plan(200, 0, size)
    parsed = parse_range(range_header, size)
    if parsed == UNSATISFIABLE:
        return None
    if not isinstance(parsed, tuple):
        return Plan(200, 0, size)
    start, end = parsed
    if knobs.wrong_range:
        start = min(max(start + knobs.wrong_range, 0), size - 1)
        end = min(max(end + knobs.wrong_range, start + 1), size)
    total = size + 1000 if knobs.bad_total else size
    return Plan(200 if knobs.range_as_200 else 206, start, end, f"bytes {start}-{end - 1}/{total}")


def stop_point(knobs: Knobs, length: int) -> tuple[int, str] | None:
    """Where a failing answer's body ends early, and how (``"rst"`` or ``"cut"``)."""
    # The earliest truncation wins; ties go to the RST because it is the harsher test.
    candidates = [
        (n, kind)
        for n, kind in ((knobs.rst, "rst"), (knobs.cut, "cut"), (knobs.chunked_cut, "cut"))
        if n is not None and n <= length
    ]
    return min(candidates, key=lambda c: c[0]) if candidates else None


def response_headers(
    knobs: Knobs, view: View, plan: Plan, *, chunked: bool
) -> list[tuple[str, str]]:
    hdrs = [("Content-Type", "application/octet-stream")]
    if knobs.gzip:
        hdrs.append(("Content-Encoding", "gzip"))
    if not knobs.no_accept_ranges:
        hdrs.append(("Accept-Ranges", "bytes"))
    if view.etag is not None:
        hdrs.append(("ETag", view.etag))
    if view.last_modified is not None:
        hdrs.append(("Last-Modified", view.last_modified))
    if plan.content_range is not None:
        hdrs.append(("Content-Range", plan.content_range))
    hdrs.append(
        ("Transfer-Encoding", "chunked")
        if chunked
        else ("Content-Length", str(plan.length + knobs.long_length))
    )
    hdrs.append(("Date", http_date()))
    return hdrs


async def integrity_headers(
    req: Request, knobs: Knobs, view: View, plan: Plan, *, failing: bool
) -> list[tuple[str, str]]:
    """Repr-Digest, Content-Digest, x-goog-hash, x-amz-checksum-sha256 as asked."""
    bad = knobs.bad_digest if failing else frozenset()
    repr_algs = wanted(req.headers.get("want-repr-digest"))
    if not repr_algs and (knobs.digest or "repr" in bad):
        repr_algs = DIGEST_ALGORITHMS
    goog = knobs.goog_hash or "goog" in bad
    amz = knobs.amz_checksum or "amz" in bad
    whole = {*repr_algs, *(("crc32c", "md5") if goog else ()), *(("sha-256",) if amz else ())}
    hdrs: list[tuple[str, str]] = []
    if whole:
        digests = await body_digests(view.body, 0, view.size, tuple(sorted(whole)))
        if repr_algs:
            hdrs.append(("Repr-Digest", digest_field(digests, repr_algs, bad="repr" in bad)))
        if goog:
            hdrs.append(("x-goog-hash", goog_hash(digests, bad="goog" in bad)))
        if amz:
            hdrs.append(("x-amz-checksum-sha256", amz_checksum(digests, bad="amz" in bad)))
            hdrs.append(("x-amz-checksum-type", "FULL_OBJECT"))
    content_algs = wanted(req.headers.get("want-content-digest"))
    if not content_algs and (knobs.digest or "content" in bad):
        content_algs = DIGEST_ALGORITHMS
    if content_algs:
        part = await body_digests(view.body, plan.start, plan.end, content_algs)
        hdrs.append(("Content-Digest", digest_field(part, content_algs, bad="content" in bad)))
    return hdrs


@dataclass
class Budget:
    """Body bytes a signed URL may still serve; spent as they are written."""

    limit: int
    spent: int = 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent)

    def spend(self, n: int) -> None:
        self.spent += n


@dataclass
class Pacing:
    """How a body is sliced and timed: piece size, throttling, the one stall."""

    piece: int
    paced: bool
    rate: float | None
    trickle_interval: float
    stall_at: int | None
    stall: float

    @classmethod
    def of(cls, knobs: Knobs, *, chunked: bool, failing: bool) -> Pacing:
        piece = CHUNK if chunked else PIECE
        paced = False
        if knobs.trickle is not None:
            piece, paced = min(piece, knobs.trickle), True
        if knobs.rate is not None:
            piece, paced = min(piece, CHUNK, max(1, int(knobs.rate // 10))), True
        return cls(
            piece=piece,
            paced=paced,
            rate=knobs.rate,
            trickle_interval=knobs.interval if knobs.trickle is not None else 0.0,
            stall_at=knobs.stall_body if failing else None,
            stall=knobs.stall,
        )

    def next_size(self, body: Body, offset: int, pos: int, limit: int) -> int:
        n = min(self.piece, limit - pos)
        if self.stall_at is not None:
            n = min(n, self.stall_at - pos)
        if not self.paced:
            # Keep the fast path zero-copy by never straddling a generator block.
            n = min(n, body.contiguous(offset + pos))
        return n


async def send_body(
    writer: asyncio.StreamWriter,
    body: Body,
    plan: Plan,
    pacing: Pacing,
    *,
    chunked: bool,
    stop: tuple[int, str] | None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Write the planned slice of ``body``, paced, and end it as ``stop`` says.

    ``on_bytes`` hears of every piece once the transport has taken it.
    """
    loop = asyncio.get_running_loop()
    limit = stop[0] if stop is not None else plan.length
    t0 = loop.time()
    pos = 0
    while pos < limit:
        if pacing.stall_at is not None and pos >= pacing.stall_at:
            await flush(writer)
            await asyncio.sleep(pacing.stall)
            pacing.stall_at = None
        n = pacing.next_size(body, plan.start, pos, limit)
        if pacing.rate is not None:
            delay = t0 + (pos + n) / pacing.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        data = body.read(plan.start + pos, n)
        if chunked:
            writer.write(b"%x\r\n" % n)
            writer.write(data)
            writer.write(b"\r\n")
        else:
            writer.write(data)
        await writer.drain()
        pos += n
        if on_bytes is not None:
            on_bytes(n)
        if pacing.trickle_interval and pos < limit:
            await asyncio.sleep(pacing.trickle_interval)
    if stop is None:
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return
    await flush(writer)
    if stop[1] == "rst":
        await reset(writer)


async def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST once the peer has the bytes sent so far."""
    await wait_delivered(writer)
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    raise Reset


SUM_SUFFIX: Final = ".sha256"
SUMS_FILE: Final = "SHA256SUMS"


def _is_sidecar(name: str) -> bool:
    return name.endswith(SUM_SUFFIX) or name.rsplit("/", 1)[-1] == SUMS_FILE


class Downloads:
    """Serves ``/r/<name>`` and ``/gen/<size>`` (GET and HEAD)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def representation(self, req: Request, knobs: Knobs) -> Representation:
        if req.path.endswith((SUM_SUFFIX, "/" + SUMS_FILE)):
            sidecar = self._sidecar(req, knobs)
            if sidecar is not None:
                return sidecar
        if req.path.startswith("/gen/"):
            return self._generated(req, knobs)
        name = req.path[len("/r/") :]
        with self.state.lock:
            res = self.state.resources.get(name)
            if res is None:
                raise HttpError(404, f"no resource named {name!r}")
            if knobs.etag_change:
                res.bumps += 1
            bumps, data, etag, lm = res.bumps, res.data, res.etag, res.last_modified
        if bumps:
            data = data.translate(xor_table(bumps))
        return Representation(
            BytesBody(data),
            versioned_etag(etag, bumps),
            shift_date(lm, dt.timedelta(seconds=bumps)),
        )

    def _sidecar(self, req: Request, knobs: Knobs) -> Representation | None:
        """``<path>.sha256`` or ``<dir>/SHA256SUMS``; None when a real resource has the name."""
        with self.state.lock:
            if req.path.startswith("/r/") and req.path[len("/r/") :] in self.state.resources:
                return None
            names = sorted(self.state.resources)
        # The sums are of what the files serve now, without bumping any version.
        plain = Knobs(changes_every=knobs.changes_every)
        if req.path.endswith(SUM_SUFFIX):
            base = req.path.removesuffix(SUM_SUFFIX)
            targets = [base]
        elif req.path.startswith("/r/"):
            folder = req.path.removesuffix(SUMS_FILE)[len("/r/") :]
            targets = [
                "/r/" + n
                for n in names
                if n.startswith(folder) and "/" not in n[len(folder) :] and not _is_sidecar(n)
            ]
        else:
            raise HttpError(404, f"no {SUMS_FILE} under /gen")
        lines: list[str] = []
        last_modified: str | None = None
        for path in targets:
            rep = self.representation(dataclasses.replace(req, path=path), plain)
            lines.append(f"{sha256_hex(rep.body)}  {path.rsplit('/', 1)[1]}\n")
            last_modified = last_modified or rep.last_modified
        text = "".join(lines).encode()
        return Representation(BytesBody(text), auto_etag(text), last_modified)

    def _generated(self, req: Request, knobs: Knobs) -> Representation:
        try:
            size = parse_size(req.path[len("/gen/") :])
        except ValueError as exc:
            raise HttpError(404, str(exc)) from None
        seed_text = req.query.get("seed", "0")
        try:
            seed = int(seed_text)
        except ValueError:
            raise HttpError(400, f"bad seed {seed_text!r}") from None
        version = 0
        if knobs.changes_every is not None:
            version = int((time.monotonic() - self.state.born) / knobs.changes_every)
        if knobs.etag_change:
            with self.state.lock:
                version = self.state.gen_versions.get(req.fault_key, 0) + 1
                self.state.gen_versions[req.fault_key] = version
        return Representation(
            GenBody(size, seed + version),
            f'"gen-{size}-{seed}-v{version}"',
            shift_date(FIXED_LAST_MODIFIED, dt.timedelta(seconds=version)),
        )

    @staticmethod
    async def view(rep: Representation, knobs: Knobs) -> View:
        body, etag = rep.body, rep.etag
        if knobs.lie is not None:
            start, end = knobs.lie_range or (0, body.size)
            body = LyingBody(body, start, end)
            if knobs.lie == "1":
                etag = tagged_etag(etag, "lie")
        if knobs.gzip:
            body = BytesBody(await gzip_body(body))
        etag = None if knobs.no_etag else etag
        if etag is not None and knobs.weak_etag and not etag.startswith("W/"):
            etag = "W/" + etag
        last_modified = None if knobs.no_last_modified else rep.last_modified
        return View(body, etag, last_modified)

    async def serve(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        keep: bool,
        budget: Budget | None = None,
    ) -> bool:
        """Answer one request; False when the connection must be closed afterwards.

        With a ``budget``, the body stops (clean close) once the budget is spent.
        """
        if req.method not in ("GET", "HEAD"):
            hdrs = [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")]
            await send_simple(writer, 405, b"method not allowed\n", hdrs, keep=keep)
            return keep
        knobs = Knobs.parse(req.query)
        with self.state.lock:
            host_lie = self.state.host_lies.get(req.host)
        if host_lie is not None and knobs.lie is None:
            knobs = dataclasses.replace(knobs, lie=host_lie)
        failing = knobs.times is None or self.state.hit(req.fault_key) <= knobs.times
        extra = [(f"X-Filler-{i}", "x" * 100) for i in range(knobs.huge_headers)]
        if knobs.disposition is not None:
            extra.append(("Content-Disposition", knobs.disposition))
        if failing and knobs.stall_headers:
            await asyncio.sleep(knobs.stall_headers)
        if failing and knobs.status is not None:
            page, retry = error_page(knobs)
            hdrs = [*extra, *retry, ("Content-Type", "text/plain")]
            head_only = req.method == "HEAD"
            await send_simple(writer, knobs.status, page, hdrs, keep=keep, head_only=head_only)
            return keep
        view = await self.view(self.representation(req, knobs), knobs)
        return await self.answer(
            writer, req, knobs, view, extra, keep=keep, failing=failing, budget=budget
        )

    async def answer(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        knobs: Knobs,
        view: View,
        extra: list[tuple[str, str]],
        *,
        keep: bool,
        failing: bool,
        budget: Budget | None = None,
    ) -> bool:
        """Send ``view`` as the request's conditionals and Range (and the knobs) say."""
        head_only = req.method == "HEAD"
        if not_modified(req.headers, view.etag, view.last_modified):
            validators = (("ETag", view.etag), ("Last-Modified", view.last_modified))
            hdrs = [(k, v) for k, v in validators if v]
            await send_simple(writer, 304, b"", [*hdrs, *extra], keep=keep)
            return keep
        plan = plan_range(req, knobs, view)
        if plan is None:
            hdrs = [("Content-Range", f"bytes */{view.size}"), *extra]
            await send_text(
                writer, 416, "range not satisfiable", keep=keep, head_only=head_only, headers=hdrs
            )
            return keep
        if knobs.long_length > 0:
            keep = False  # the promised bytes never come: the close ends the body
        chunked = knobs.chunked or knobs.chunked_cut is not None
        hdrs = response_headers(knobs, view, plan, chunked=chunked)
        hdrs += await integrity_headers(req, knobs, view, plan, failing=failing)
        hdrs += extra
        if not keep:
            hdrs.append(("Connection", "close"))
        writer.write(head_bytes(plan.status, hdrs))
        if head_only:
            await writer.drain()
            return keep
        stop = stop_point(knobs, plan.length) if failing else None
        if budget is not None and budget.remaining < plan.length:
            stop = min(stop or (plan.length, "cut"), (budget.remaining, "cut"))
        pacing = Pacing.of(knobs, chunked=chunked, failing=failing)
        spend = None if budget is None else budget.spend
        await send_body(writer, view.body, plan, pacing, chunked=chunked, stop=stop, on_bytes=spend)
        return keep and stop is None
