"""A real HTTP/1.1 server that misbehaves on request, for tests and demos.

It sits on raw ``asyncio.start_server`` streams rather than a framework
because the interesting faults live below HTTP semantics: TCP resets, bodies
shorter than their Content-Length, headers that lie about ranges. It only
binds loopback addresses and ephemeral ports unless told otherwise.

Endpoints
---------
``/r/<name>``
    A resource registered with :meth:`FaultServer.add` / :meth:`FaultServer.replace`.
``/gen/<size>[?seed=S]``
    Deterministic generated content (see :mod:`bgtransfer.testing._data`); size
    accepts K/M/G suffixes (powers of 1024). Strong ETag
    ``"gen-<size>-<seed>-v<version>"``, fixed Last-Modified.
``/redirect?to=<url>[&code=302]``
    Redirect with ``Location`` copied verbatim (even ``file://`` or ``gopher://``).
``/loop/<n>``
    302 to ``/loop/<n+1>`` forever (the query string is carried along).
``/echo``
    200 with a JSON body describing the request (method, target, path, query,
    headers, host, body_length).

Anything else is 404. ``/r`` and ``/gen`` answer GET and HEAD (405 otherwise).

Correct behaviour (no knobs)
----------------------------
Single ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` gives 206 with
Content-Range; multi-range or unparsable Range is ignored (200); a start at or
past the end gives 416 with ``Content-Range: bytes */size``. ``If-Range`` lets
the Range through only if it equals the current strong ETag exactly (a weak
ETag never matches) or the Last-Modified string exactly; otherwise 200 with the
full body. Keep-alive, pipelining, ``Connection: close``, HEAD and request
bodies (Content-Length or chunked, read and discarded) are supported.

Fault knobs
-----------
Query parameters on ``/r/<name>`` and ``/gen/<size>``; they combine.

Failure knobs, limited by ``times``:

``times=K``
    Apply the failure knobs only to the first K requests of this *fault key*
    (request path plus the whole query string, so add a unique ``key=...`` to
    isolate a test). Default: every request. :meth:`FaultServer.reset_counters`
    starts counting again.
``cut=N``
    Full headers (true Content-Length), only N body bytes, then a clean FIN.
``rst=N``
    N body bytes (delivered to the peer first), then a TCP RST.
``stall_headers=S``
    Wait S seconds (float) before sending anything.
``stall_body=N&stall=S``
    Send N body bytes, pause S seconds, then continue.
``status=CODE``
    Answer CODE (200-599) with the text body ``error page CODE`` instead of the
    resource. ``retry_after=VALUE`` adds ``Retry-After: VALUE`` verbatim;
    ``retry_after_in=S`` adds it as an HTTP-date S seconds from now.
``chunked_cut=N``
    Chunked encoding, connection closed after N body bytes without the final
    zero-length chunk. (When ``times`` is exhausted it is plain ``chunked=1``.)

Always-on knobs:

``trickle=B&interval=S``
    Send the body B bytes at a time, S seconds apart.
``rate=R``
    Throttle the body to R bytes/second (pieces of min(64 KiB, R/10)).
``ignore_range=1``
    Ignore Range/If-Range: always 200 with the full body.
``wrong_range=K``
    Answer a Range with 206 whose Content-Range *and body* start K bytes after
    the requested start (a lying server).
``full_as_206=1``
    Every GET is 206 ``bytes 0-(size-1)/size`` with the full body.
``range_as_200=1``
    Honour the Range but answer 200 (with a correct Content-Range header).
``bad_total=1``
    Correct 206 except that the Content-Range total is size + 1000.
``etag_change=1``
    Each request bumps the version first: new ETag, new Last-Modified and
    different bytes (``/gen``: content of seed + version; ``/r``: data XORed
    with a per-version byte), so If-Range never matches and the answer is 200.
``no_etag=1`` / ``weak_etag=1`` / ``no_last_modified=1``
    Drop the ETag, send it as ``W/"..."``, drop Last-Modified.
``no_accept_ranges=1``
    Do not send ``Accept-Ranges: bytes``.
``chunked=1``
    ``Transfer-Encoding: chunked`` (64 KiB chunks), no Content-Length.
``gzip=1``
    ``Content-Encoding: gzip`` whatever Accept-Encoding says; the representation
    is ``gzip.compress(body, mtime=0)`` and Range/Content-Length apply to those
    gzip bytes (RFC 9110 section 14.1.2).
``huge_headers=N``
    Add N headers ``X-Filler-<i>: xxx...`` (100 x's).

Malformed request heads get 400, heads over 64 KiB get 431; both then close.
Invalid knob values get 400 with a text body naming the knob.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import gzip
import hashlib
import http
import itertools
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from bgtransfer.testing._data import BLOCK, gen_block_view, gen_bytes, parse_size

__all__ = ["FIXED_LAST_MODIFIED", "FaultServer", "RequestRecord"]

logger = logging.getLogger("bgtransfer.testing")

FIXED_LAST_MODIFIED: Final = "Wed, 01 Jan 2020 00:00:00 GMT"
_AUTO_ETAGS: Final = frozenset({'"auto"', "auto"})
MAX_HEAD: Final = 64 * 1024
PIECE: Final = BLOCK
CHUNK: Final = 64 * 1024
# Generous, so an idle keep-alive client in a slow test is not cut off, but
# finite, so the CLI does not accumulate dead connections forever.
IDLE_TIMEOUT: Final = 300.0
# Bound on how long a cut/rst waits for the peer to take delivery of the bytes
# before the fault; a client that never reads must not wedge the server.
DELIVERY_TIMEOUT: Final = 2.0

_DIGITS = re.compile(r"^[0-9]+$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

try:
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - non-Linux
    _TIOCOUTQ = None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (including requests that got faults).

    ``headers`` has lower-cased names, duplicates joined with ``", "``; ``host``
    is the listener address that accepted it; ``time`` is ``time.monotonic()``.
    ``connection`` numbers the TCP connections of this server from 1, so tests
    can tell whether a client reused a keep-alive connection.
    """

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    host: str
    time: float = field(compare=False)
    connection: int = field(default=0, compare=False)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_range(self) -> str | None:
        return self.headers.get("if-range")

    @property
    def accept_encoding(self) -> str | None:
        return self.headers.get("accept-encoding")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def cookie(self) -> str | None:
        return self.headers.get("cookie")


class _HttpError(Exception):
    """A response to send instead of the normal one, after which we close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Reset(Exception):
    """The connection was deliberately reset; nothing more may be written."""


# --------------------------------------------------------------------------- bodies


class _Body:
    size: int

    def read(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def contiguous(self, offset: int) -> int:
        """How many bytes from offset can be served without copying."""
        raise NotImplementedError

    def materialize(self) -> bytes:
        return bytes(self.read(0, self.size))


class _BytesBody(_Body):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes | memoryview:
        return memoryview(self.data)[offset : offset + length]

    def contiguous(self, offset: int) -> int:
        return self.size - offset

    def materialize(self) -> bytes:
        return self.data


class _GenBody(_Body):
    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed

    def read(self, offset: int, length: int) -> bytes | memoryview:
        length = min(length, self.size - offset)
        if offset % BLOCK + length <= BLOCK:
            return gen_block_view(self.seed, offset, length)
        parts: list[memoryview] = []
        end = offset + length
        while offset < end:
            n = min(end - offset, BLOCK - offset % BLOCK)
            parts.append(gen_block_view(self.seed, offset, n))
            offset += n
        return b"".join(parts)

    def contiguous(self, offset: int) -> int:
        return min(self.size - offset, BLOCK - offset % BLOCK)

    def materialize(self) -> bytes:
        return gen_bytes(self.size, self.seed)


@functools.lru_cache(maxsize=8)
def _gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@functools.lru_cache(maxsize=4)
def _gzip_gen(size: int, seed: int) -> bytes:
    return gzip.compress(gen_bytes(size, seed), mtime=0)


# --------------------------------------------------------------------------- state


@dataclass
class _Resource:
    data: bytes
    etag: str | None
    last_modified: str | None
    bumps: int = 0  # etag_change versions served so far


@dataclass
class _Representation:
    body: _Body
    etag: str | None
    last_modified: str | None


@dataclass(eq=False)  # identity hashing: connections live in a set
class _Conn:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    ident: int


@dataclass
class _Request:
    method: str
    target: str
    version: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    host: str

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def fault_key(self) -> str:
        return self.raw_path + "?" + urlencode(sorted(self.query.items()))


@dataclass
class _Knobs:
    times: int | None = None
    cut: int | None = None
    rst: int | None = None
    stall_headers: float | None = None
    stall_body: int | None = None
    stall: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    retry_after_in: float | None = None
    chunked_cut: int | None = None
    trickle: int | None = None
    interval: float = 0.0
    rate: float | None = None
    ignore_range: bool = False
    wrong_range: int | None = None
    full_as_206: bool = False
    range_as_200: bool = False
    bad_total: bool = False
    etag_change: bool = False
    no_etag: bool = False
    weak_etag: bool = False
    no_last_modified: bool = False
    no_accept_ranges: bool = False
    chunked: bool = False
    gzip: bool = False
    huge_headers: int = 0

    @classmethod
    def parse(cls, q: Mapping[str, str]) -> _Knobs:
        def num(name: str, conv: Callable[[str], float]) -> float | None:
            raw = q.get(name)
            if raw is None:
                return None
            try:
                value = conv(raw)
            except ValueError:
                raise _HttpError(400, f"bad value for knob {name}: {raw!r}") from None
            if value < 0 and name != "wrong_range":
                raise _HttpError(400, f"knob {name} must not be negative")
            return value

        def integer(name: str) -> int | None:
            v = num(name, int)
            return None if v is None else int(v)

        def flt(name: str) -> float | None:
            return num(name, float)

        def flag(name: str) -> bool:
            raw = q.get(name)
            return raw is not None and raw.lower() not in ("0", "false", "no", "off")

        status = integer("status")
        if status is not None and not 200 <= status <= 599:
            raise _HttpError(400, "knob status must be in 200..599")
        rate = flt("rate")
        if rate is not None and rate <= 0:
            raise _HttpError(400, "knob rate must be positive")
        trickle = integer("trickle")
        if trickle is not None and trickle <= 0:
            raise _HttpError(400, "knob trickle must be positive")
        retry_after = q.get("retry_after")
        if retry_after is not None and ("\r" in retry_after or "\n" in retry_after):
            raise _HttpError(400, "knob retry_after must not contain line breaks")
        return cls(
            times=integer("times"),
            cut=integer("cut"),
            rst=integer("rst"),
            stall_headers=flt("stall_headers"),
            stall_body=integer("stall_body"),
            stall=flt("stall") or 0.0,
            status=status,
            retry_after=retry_after,
            retry_after_in=flt("retry_after_in"),
            chunked_cut=integer("chunked_cut"),
            trickle=trickle,
            interval=flt("interval") or 0.0,
            rate=rate,
            ignore_range=flag("ignore_range"),
            wrong_range=integer("wrong_range"),
            full_as_206=flag("full_as_206"),
            range_as_200=flag("range_as_200"),
            bad_total=flag("bad_total"),
            etag_change=flag("etag_change"),
            no_etag=flag("no_etag"),
            weak_etag=flag("weak_etag"),
            no_last_modified=flag("no_last_modified"),
            no_accept_ranges=flag("no_accept_ranges"),
            chunked=flag("chunked"),
            gzip=flag("gzip"),
            huge_headers=integer("huge_headers") or 0,
        )


# --------------------------------------------------------------------------- helpers


def _auto_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def _versioned_etag(etag: str | None, version: int) -> str | None:
    if etag is None or version == 0:
        return etag
    if etag.endswith('"'):
        return etag[:-1] + f'-v{version}"'
    return f"{etag}-v{version}"


def _shift_date(value: str | None, delta: dt.timedelta) -> str | None:
    """Move an HTTP-date; strings that are not dates get a suffix so they still change."""
    if value is None or not delta:
        return value
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return f"{value} +{int(delta.total_seconds())}s"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime((parsed + delta).astimezone(dt.UTC), usegmt=True)


def _xor_table(version: int) -> bytes:
    # Never XOR with 0, so every bumped version really has different bytes.
    k = (version - 1) % 255 + 1
    return bytes(i ^ k for i in range(256))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _http_date(offset_seconds: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return email.utils.format_datetime(when, usegmt=True)


_UNSATISFIABLE: Final = "unsatisfiable"


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(start, end_exclusive), _UNSATISFIABLE, or None when the header is to be ignored."""
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash:
        return None
    if first == "":
        if not _DIGITS.match(last):
            return None
        n = int(last)
        if n == 0 or size == 0:
            return _UNSATISFIABLE
        return (max(0, size - n), size)
    if not _DIGITS.match(first) or (last and not _DIGITS.match(last)):
        return None
    start = int(first)
    end = size
    if last:
        if int(last) < start:
            return None
        end = min(int(last) + 1, size)
    if start >= size:
        return _UNSATISFIABLE
    return (start, end)


def _head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _unsent_bytes(sock: socket.socket) -> int:
    if _TIOCOUTQ is None:
        return 0
    try:
        out = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return 0
    return int(struct.unpack("i", out)[0])


def _parse_head(head: bytes, host: str) -> _Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise _HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method) or not target or not re.match(r"^HTTP/1\.[0-9]$", version):
        raise _HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise _HttpError(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise _HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    split = urlsplit(target)
    raw_path = split.path or "/"
    return _Request(
        method=method,
        target=target,
        version=version,
        path=unquote(raw_path),
        raw_path=raw_path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        host=host,
    )


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    # Peers vanishing mid-response is the point of this server, not an error.
    if isinstance(context.get("exception"), ConnectionError):
        return
    loop.default_exception_handler(context)


# --------------------------------------------------------------------------- server


class FaultServer:
    """Fault-injecting HTTP/1.1 server running on its own loop in a daemon thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, other_host: bool = False) -> None:
        self.host = host
        self._requested_port = port
        self._other_host = other_host
        self._port: int | None = None
        self._other_port: int | None = None
        self.log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._counters: dict[str, int] = {}
        self._gen_versions: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._conns: set[_Conn] = set()
        self._conn_ids = itertools.count(1)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultServer is not listening yet: call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def other_base_url(self) -> str | None:
        if self._other_port is None:
            return None
        return f"http://127.0.0.2:{self._other_port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # ------------------------------------------------------------------ resources

    def add(
        self,
        name: str,
        data: bytes,
        *,
        etag: str | None = '"auto"',
        last_modified: str | None = FIXED_LAST_MODIFIED,
    ) -> str:
        """Register ``data`` at ``/r/<name>`` and return its URL (server must be started)."""
        resolved = _auto_etag(data) if etag in _AUTO_ETAGS else etag
        with self._lock:
            self._resources[name] = _Resource(bytes(data), resolved, last_modified)
        return self.url("/r/" + quote(name))

    def replace(
        self,
        name: str,
        data: bytes,
        *,
        etag: str | None = '"auto"',
        last_modified: str | None = "auto",
    ) -> None:
        """Publish a new version of ``/r/<name>``.

        ``etag='"auto"'`` derives a strong ETag from the new bytes. ``last_modified="auto"``
        moves the previous date one hour on, because keeping it would let an
        If-Range carrying the old date splice old and new bytes; None drops it.
        """
        with self._lock:
            old = self._resources.get(name)
            if old is None:
                raise KeyError(f"no resource named {name!r}; use add() first")
            resolved = _auto_etag(data) if etag in _AUTO_ETAGS else etag
            if last_modified == "auto":
                last_modified = _shift_date(old.last_modified, dt.timedelta(hours=1))
            self._resources[name] = _Resource(bytes(data), resolved, last_modified)

    # ------------------------------------------------------------------ log and counters

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.log.append(rec)

    def requests(self, path_prefix: str = "") -> list[RequestRecord]:
        """Copy of the log, restricted to requests whose decoded path starts with the prefix."""
        with self._lock:
            return [r for r in self.log if r.path.startswith(path_prefix)]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def reset_counters(self) -> None:
        """Forget how often each fault key was hit (``times``) and the /gen versions."""
        with self._lock:
            self._counters.clear()
            self._gen_versions.clear()

    def _hit(self, key: str) -> int:
        with self._lock:
            n = self._counters.get(key, 0) + 1
            self._counters[key] = n
            return n

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start listening on a private loop in a daemon thread; returns once bound."""
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._closing = False
        thread = threading.Thread(
            target=self._thread_main, args=(ready, errors), name="FaultServer", daemon=True
        )
        self._thread = thread
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("FaultServer did not start within 10 s")
        if errors:
            thread.join(5)
            self._thread = None
            raise errors[0]

    def stop(self) -> None:
        """Close listeners and every connection (stalled ones too), then join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            deadline = time.monotonic() + 5
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(timeout=4)
            except TimeoutError:
                logger.warning("FaultServer shutdown took longer than 4 s")
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(max(0.1, deadline - time.monotonic()))
        self._thread = None

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._open_listeners())
            except BaseException as exc:  # noqa: BLE001 - handed to start() to re-raise
                errors.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            self._finish_loop(loop)

    @staticmethod
    def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
        # Same teardown asyncio.run() does, so nothing is reported as "destroyed
        # but pending" and no ResourceWarning leaks into the test run.
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    async def _open_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.set_exception_handler(_quiet_exception_handler)
        self._closing = False
        main = await asyncio.start_server(
            self._handle_conn, self.host, self._requested_port, limit=MAX_HEAD
        )
        self._servers.append(main)
        self._port = main.sockets[0].getsockname()[1]
        if self._other_host:
            try:
                other = await asyncio.start_server(
                    self._handle_conn, "127.0.0.2", 0, limit=MAX_HEAD
                )
            except OSError as exc:
                main.close()
                await main.wait_closed()
                self._servers.clear()
                raise RuntimeError(
                    "FaultServer(other_host=True) could not bind 127.0.0.2 "
                    f"({exc}); on macOS add it with `sudo ifconfig lo0 alias 127.0.0.2`"
                ) from exc
            self._servers.append(other)
            self._other_port = other.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        # Let connections accepted just before close() reach their handler, which
        # sees _closing and aborts, instead of lingering unseen.
        await asyncio.sleep(0)
        conns = list(self._conns)
        for conn in conns:
            conn.writer.transport.abort()
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()

    async def serve_forever_async(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve on the running loop until cancelled (used by ``python -m bgtransfer.testing``)."""
        await self._open_listeners()
        try:
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------ connection

    async def _handle_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.transport.abort()
            return
        conn = _Conn(writer, asyncio.current_task(), next(self._conn_ids))
        self._conns.add(conn)
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockname = writer.get_extra_info("sockname")
        host = str(sockname[0]) if sockname else self.host
        try:
            while True:
                try:
                    head = await asyncio.wait_for(self._read_head(reader), IDLE_TIMEOUT)
                except _HttpError as err:
                    await self._send_text(writer, err.status, err.message, keep=False)
                    break
                if head is None:
                    break
                if not head:
                    continue
                if not await self._serve_one(reader, writer, head, host, conn.ident):
                    break
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, _Reset):
            pass
        except OSError:
            pass
        except asyncio.CancelledError:
            # Only stop() cancels these; re-raising makes asyncio's start_server callback
            # log a spurious "Exception in callback" traceback for every open connection.
            writer.transport.abort()
        except Exception:
            logger.exception("FaultServer: unexpected error while serving a connection")
            writer.transport.abort()
        finally:
            self._conns.discard(conn)
            await self._close_writer(writer)

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
        """The next request head; None on EOF, b"" for stray blank lines."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise _HttpError(431, "request head larger than 64 KiB") from None
        except ValueError:
            # StreamReader raises ValueError when the buffer overran between reads.
            raise _HttpError(431, "request head larger than 64 KiB") from None
        return head.lstrip(b"\r\n")

    async def _read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: _Request
    ) -> int:
        te = req.headers.get("transfer-encoding")
        cl = req.headers.get("content-length")
        if te is None and cl is None:
            return 0
        if req.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if te is not None:
            if te.strip().lower() != "chunked":
                raise _HttpError(501, f"unsupported Transfer-Encoding {te!r}")
            return await self._discard_chunked(reader)
        assert cl is not None
        values = {v.strip() for v in cl.split(",")}
        if len(values) != 1 or not _DIGITS.match(next(iter(values))):
            raise _HttpError(400, "bad Content-Length")
        remaining = total = int(values.pop())
        while remaining:
            chunk = await reader.read(min(remaining, CHUNK))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
        return total

    @staticmethod
    async def _discard_chunked(reader: asyncio.StreamReader) -> int:
        total = 0
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except (asyncio.LimitOverrunError, ValueError):
                raise _HttpError(400, "bad chunk header") from None
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return total
            await reader.readexactly(size + 2)
            total += size

    # ------------------------------------------------------------------ routing

    async def _serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        host: str,
        conn_id: int,
    ) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        try:
            req = _parse_head(head, host)
        except _HttpError as err:
            await self._send_text(writer, err.status, err.message, keep=False)
            return False
        self._record(
            RequestRecord(
                method=req.method,
                target=req.target,
                path=req.path,
                query=dict(req.query),
                headers=dict(req.headers),
                host=host,
                time=time.monotonic(),
                connection=conn_id,
            )
        )
        try:
            body_length = await self._read_body(reader, writer, req)
        except _HttpError as err:
            await self._send_text(writer, err.status, err.message, keep=False)
            return False
        keep = req.keep_alive
        head_only = req.method == "HEAD"
        try:
            if req.path.startswith(("/r/", "/gen/")):
                return await self._serve_resource(writer, req, keep)
            if req.path == "/redirect":
                return await self._serve_redirect(writer, req, keep)
            if req.path.startswith("/loop/"):
                n_text = req.path[len("/loop/") :]
                if not _DIGITS.match(n_text):
                    raise _HttpError(404, "loop index must be a number")
                split = urlsplit(req.target)
                location = f"/loop/{int(n_text) + 1}" + (f"?{split.query}" if split.query else "")
                await self._send_simple(
                    writer, 302, b"", [("Location", location)], keep=keep, head_only=head_only
                )
                return keep
            if req.path == "/echo":
                payload = {
                    "method": req.method,
                    "target": req.target,
                    "path": req.path,
                    "query": req.query,
                    "headers": req.headers,
                    "host": host,
                    "body_length": body_length,
                }
                await self._send_simple(
                    writer,
                    200,
                    json.dumps(payload, indent=1).encode(),
                    [("Content-Type", "application/json")],
                    keep=keep,
                    head_only=head_only,
                )
                return keep
            await self._send_text(
                writer, 404, f"not found: {req.path}", keep=keep, head_only=head_only
            )
            return keep
        except _HttpError as err:
            await self._send_text(writer, err.status, err.message, keep=keep, head_only=head_only)
            return keep

    async def _serve_redirect(
        self, writer: asyncio.StreamWriter, req: _Request, keep: bool
    ) -> bool:
        to = req.query.get("to")
        if to is None:
            raise _HttpError(400, "redirect needs ?to=<url>")
        if "\r" in to or "\n" in to:
            raise _HttpError(400, "redirect target must not contain line breaks")
        code_text = req.query.get("code", "302")
        if not _DIGITS.match(code_text) or not 300 <= int(code_text) <= 399:
            raise _HttpError(400, "redirect code must be 300..399")
        await self._send_simple(
            writer,
            int(code_text),
            b"",
            [("Location", to)],
            keep=keep,
            head_only=req.method == "HEAD",
        )
        return keep

    def _representation(self, req: _Request, knobs: _Knobs) -> _Representation:
        if req.path.startswith("/gen/"):
            try:
                size = parse_size(req.path[len("/gen/") :])
            except ValueError as exc:
                raise _HttpError(404, str(exc)) from None
            seed_text = req.query.get("seed", "0")
            try:
                seed = int(seed_text)
            except ValueError:
                raise _HttpError(400, f"bad seed {seed_text!r}") from None
            version = 0
            if knobs.etag_change:
                with self._lock:
                    version = self._gen_versions.get(req.fault_key, 0) + 1
                    self._gen_versions[req.fault_key] = version
            return _Representation(
                _GenBody(size, seed + version),
                f'"gen-{size}-{seed}-v{version}"',
                _shift_date(FIXED_LAST_MODIFIED, dt.timedelta(seconds=version)),
            )
        name = req.path[len("/r/") :]
        with self._lock:
            res = self._resources.get(name)
            if res is None:
                raise _HttpError(404, f"no resource named {name!r}")
            if knobs.etag_change:
                res.bumps += 1
            bumps, data, etag, lm = res.bumps, res.data, res.etag, res.last_modified
        if bumps:
            data = data.translate(_xor_table(bumps))
        return _Representation(
            _BytesBody(data),
            _versioned_etag(etag, bumps),
            _shift_date(lm, dt.timedelta(seconds=bumps)),
        )

    # ------------------------------------------------------------------ resources

    async def _serve_resource(
        self, writer: asyncio.StreamWriter, req: _Request, keep: bool
    ) -> bool:
        if req.method not in ("GET", "HEAD"):
            await self._send_simple(
                writer,
                405,
                b"method not allowed\n",
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")],
                keep=keep,
            )
            return keep
        knobs = _Knobs.parse(req.query)
        count = self._hit(req.fault_key)
        failing = knobs.times is None or count <= knobs.times
        head_only = req.method == "HEAD"
        extra = [(f"X-Filler-{i}", "x" * 100) for i in range(knobs.huge_headers)]

        if failing and knobs.stall_headers:
            await asyncio.sleep(knobs.stall_headers)
        if failing and knobs.status is not None:
            hdrs = list(extra)
            if knobs.retry_after is not None:
                hdrs.append(("Retry-After", knobs.retry_after))
            if knobs.retry_after_in is not None:
                hdrs.append(("Retry-After", _http_date(knobs.retry_after_in)))
            page = b"" if knobs.status in (204, 304) else f"error page {knobs.status}".encode()
            hdrs.append(("Content-Type", "text/plain"))
            await self._send_simple(
                writer, knobs.status, page, hdrs, keep=keep, head_only=head_only
            )
            return keep

        rep = self._representation(req, knobs)
        body: _Body = rep.body
        if knobs.gzip:
            body = _BytesBody(await self._gzip(body))
        etag = None if knobs.no_etag else rep.etag
        if etag is not None and knobs.weak_etag and not etag.startswith("W/"):
            etag = "W/" + etag
        last_modified = None if knobs.no_last_modified else rep.last_modified
        size = body.size

        status, start, end = 200, 0, size
        content_range: str | None = None
        range_header = req.headers.get("range")
        if knobs.full_as_206:
            status = 206
            content_range = f"bytes 0-{size - 1}/{size}" if size else f"bytes */{size}"
        elif (
            range_header is not None
            and not knobs.ignore_range
            and self._if_range_ok(req.headers.get("if-range"), etag, last_modified)
        ):
            parsed = _parse_range(range_header, size)
            if parsed == _UNSATISFIABLE:
                hdrs = [("Content-Range", f"bytes */{size}"), *extra]
                await self._send_text(
                    writer,
                    416,
                    "range not satisfiable",
                    keep=keep,
                    head_only=head_only,
                    headers=hdrs,
                )
                return keep
            if isinstance(parsed, tuple):
                start, end = parsed
                if knobs.wrong_range:
                    start = min(max(start + knobs.wrong_range, 0), size - 1)
                    end = min(max(end + knobs.wrong_range, start + 1), size)
                status = 200 if knobs.range_as_200 else 206
                total = size + 1000 if knobs.bad_total else size
                content_range = f"bytes {start}-{end - 1}/{total}"

        length = end - start
        chunked = knobs.chunked or knobs.chunked_cut is not None
        hdrs = [("Content-Type", "application/octet-stream")]
        if knobs.gzip:
            hdrs.append(("Content-Encoding", "gzip"))
        if not knobs.no_accept_ranges:
            hdrs.append(("Accept-Ranges", "bytes"))
        if etag is not None:
            hdrs.append(("ETag", etag))
        if last_modified is not None:
            hdrs.append(("Last-Modified", last_modified))
        if content_range is not None:
            hdrs.append(("Content-Range", content_range))
        hdrs.append(
            ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length))
        )
        hdrs.append(("Date", _http_date()))
        hdrs.extend(extra)
        if not keep:
            hdrs.append(("Connection", "close"))
        writer.write(_head_bytes(status, hdrs))
        if head_only:
            await writer.drain()
            return keep

        # The earliest truncation wins; ties go to the RST because it is the harsher test.
        stop: tuple[int, str] | None = None
        if failing:
            candidates = [
                (n, kind)
                for n, kind in ((knobs.rst, "rst"), (knobs.cut, "cut"), (knobs.chunked_cut, "cut"))
                if n is not None and n <= length
            ]
            if candidates:
                stop = min(candidates, key=lambda c: c[0])
        stall_at = knobs.stall_body if failing and knobs.stall_body is not None else None
        await self._send_body(writer, body, start, length, knobs, chunked, stop, stall_at)
        return keep and stop is None

    @staticmethod
    def _if_range_ok(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
        if if_range is None:
            return True
        if etag is not None and not etag.startswith("W/") and if_range == etag:
            return True
        return last_modified is not None and if_range == last_modified

    @staticmethod
    async def _gzip(body: _Body) -> bytes:
        # Compressing a large body would freeze every other connection on the loop.
        if isinstance(body, _GenBody):
            if body.size <= PIECE:
                return _gzip_gen(body.size, body.seed)
            return await asyncio.to_thread(_gzip_gen, body.size, body.seed)
        data = body.materialize()
        if len(data) <= PIECE:
            return _gzip_bytes(data)
        return await asyncio.to_thread(_gzip_bytes, data)

    async def _send_body(
        self,
        writer: asyncio.StreamWriter,
        body: _Body,
        start: int,
        length: int,
        knobs: _Knobs,
        chunked: bool,
        stop: tuple[int, str] | None,
        stall_at: int | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        limit = stop[0] if stop is not None else length
        piece = CHUNK if chunked else PIECE
        paced = False
        if knobs.trickle is not None:
            piece, paced = min(piece, knobs.trickle), True
        if knobs.rate is not None:
            piece, paced = min(piece, CHUNK, max(1, int(knobs.rate // 10))), True
        t0 = loop.time()
        pos = 0
        while pos < limit:
            if stall_at is not None and pos >= stall_at:
                await self._flush(writer)
                await asyncio.sleep(knobs.stall)
                stall_at = None
            n = min(piece, limit - pos)
            if stall_at is not None:
                n = min(n, stall_at - pos)
            if not paced:
                # Keep the fast path zero-copy by never straddling a generator block.
                n = min(n, body.contiguous(start + pos))
            if knobs.rate is not None:
                delay = t0 + (pos + n) / knobs.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            data = body.read(start + pos, n)
            if chunked:
                writer.write(b"%x\r\n" % n)
                writer.write(data)
                writer.write(b"\r\n")
            else:
                writer.write(data)
            await writer.drain()
            pos += n
            if knobs.trickle is not None and pos < limit and knobs.interval:
                await asyncio.sleep(knobs.interval)
        if stop is not None:
            await self._flush(writer)
            if stop[1] == "rst":
                await self._wait_delivered(writer)
                sock: socket.socket | None = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
                raise _Reset
            return
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _flush(writer: asyncio.StreamWriter) -> None:
        """Wait until the transport buffer is empty, not just below the high-water mark."""
        transport = writer.transport
        high = transport.get_write_buffer_limits()[1]
        transport.set_write_buffer_limits(high=0)
        try:
            await writer.drain()
        finally:
            transport.set_write_buffer_limits(high=high)

    @staticmethod
    async def _wait_delivered(writer: asyncio.StreamWriter) -> None:
        # An RST discards whatever still sits in the kernel send queue, so the
        # "N bytes then reset" contract needs the peer to have acknowledged them.
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is None:
            return
        for _ in range(int(DELIVERY_TIMEOUT / 0.002)):
            if _unsent_bytes(sock) == 0:
                return
            await asyncio.sleep(0.002)

    # ------------------------------------------------------------------ simple responses

    @staticmethod
    async def _send_simple(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]],
        *,
        keep: bool,
        head_only: bool = False,
    ) -> None:
        hdrs = list(headers)
        if status not in (204, 304):
            hdrs.append(("Content-Length", str(len(body))))
        hdrs.append(("Date", _http_date()))
        if not keep:
            hdrs.append(("Connection", "close"))
        writer.write(_head_bytes(status, hdrs) + (b"" if head_only else body))
        await writer.drain()

    async def _send_text(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        text: str,
        *,
        keep: bool,
        head_only: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        hdrs = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
        await self._send_simple(
            writer, status, (text + "\n").encode(), hdrs, keep=keep, head_only=head_only
        )
