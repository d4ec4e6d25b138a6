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
    headers, host, body_length). Knobs: ``status=CODE`` (200-599), ``reason=TEXT``
    (the reason phrase), ``type=CONTENT_TYPE``, ``body=TEXT`` (instead of the JSON),
    ``gen=SIZE`` (the ``/gen/<SIZE>`` bytes instead, at most 64M), ``digest=1``
    (a ``Repr-Digest: sha-256`` of the body; ``digest=wrong``: of other bytes),
    ``set_cookie=VALUE`` / ``set_cookie2=VALUE`` (a ``Set-Cookie`` / ``Set-Cookie2``
    header, verbatim); values must be printable ASCII.

``/upload/<name>``, ``/tus/``, ``/ietf/<name>``
    Upload endpoints; see *Uploads* below.

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
``ignore_if_range=1``
    Honour Range whatever If-Range says: a 206 of the *current* version (with its
    own ETag and Last-Modified) even when the client's validator is an older one's,
    as S3 does.
``wrong_range=K``
    Answer a Range with 206 whose Content-Range *and body* start K bytes after
    the requested start (a lying server).
``full_as_206=1``
    Every GET is 206 ``bytes 0-(size-1)/size`` with the full body.
``range_as_200=1``
    Honour the Range but answer 200 (with a correct Content-Range header).
``bad_total=1``
    Correct 206 except that the Content-Range total is size + 1000.
``long_length=K``
    Every answer's Content-Length claims K more bytes than the body has (Content-Range
    is true); the connection closes after the body (a server with a wrong length).
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
``disposition=VALUE``
    Send ``Content-Disposition: VALUE`` verbatim (for file-naming tests).
``changes_every=S``
    ``/gen`` only: a new version (ETag, Last-Modified, bytes) every S seconds of the
    server's life, for polling clients (background fetch jobs).

Conditional GET (always on, RFC 9110 section 13): ``If-None-Match`` matching the current
ETag (weak comparison, or ``*``) gives ``304 Not Modified`` with the ETag and no body;
without it, ``If-Modified-Since`` not older than Last-Modified does the same.

Malformed request heads get 400, heads over 64 KiB get 431; both then close.
Invalid knob values get 400 with a text body naming the knob.

Uploads
-------
Request bodies (Content-Length or chunked) are read incrementally and kept in
memory. :meth:`FaultServer.upload_received` counts every body byte as it
arrives, per upload name, over all requests, so a client that dies mid-body
leaves an exact count. A request refused on its headers has its body read and
discarded (and counted) before the answer, except that a client still waiting
for ``100 Continue`` is answered at once and the connection closed. Error
answers are ``text/plain``. Every response has a Content-Length except 204s
(RFC 9110 forbids it there).

``PUT|POST /upload/<name>``
    Stores the complete body as ``uploads[name]``; ``201`` (PUT of a new name)
    or ``200`` with JSON ``{"name", "size", "sha256"}``. A
    ``multipart/form-data`` body is split instead: file parts (those with a
    ``filename``) go to ``uploads["<name>/<field>"]``, other fields to
    ``upload_fields[name]``; ``200`` with JSON ``{"name", "size", "sha256",
    "parts": [...], "fields": {...}}``. A truncated body stores nothing.
    Knobs, limited by ``times=K`` as above: ``cut=N`` (once N body bytes arrived
    and more follow, close without answering), ``stall=S`` (wait before
    answering), ``status=CODE`` with ``retry_after``/``retry_after_in``
    (answer that after reading the body; nothing stored).
``/tus/`` and ``/tus/<id>``: tus 1.0.0 with creation, checksum, termination
    ``OPTIONS`` 204 with the capability headers; ``POST /tus/`` needs
    ``Tus-Resumable: 1.0.0`` (else 412) and ``Upload-Length`` (else 400; over
    ``Tus-Max-Size`` 413), answers 201 with an absolute ``Location``. The
    upload's name is its ``filename`` metadata (base64-decoded) or its id.
    ``HEAD`` 200 with ``Upload-Offset``, ``Upload-Length``, ``Cache-Control:
    no-store``. ``PATCH`` needs ``Content-Type: application/offset+octet-stream``
    (415) and ``Upload-Offset`` equal to the current offset (409); the body is
    appended as it arrives, so an interrupted PATCH keeps its prefix (with an
    ``Upload-Checksum`` too: the checksum covers the whole body, which never
    came). ``Upload-Checksum: sha1|sha256 <base64>`` mismatch gives 460 and
    nothing appended, another algorithm 400; going past Upload-Length 400.
    Success is 204 with the new ``Upload-Offset``. ``DELETE`` 204. Unknown or
    forgotten ids 404. Every non-OPTIONS answer has ``Tus-Resumable``.
``/ietf/<name>`` and ``/ietf/u/<id>``: draft-ietf-httpbis-resumable-upload-05
    ``POST /ietf/<name>`` with ``Upload-Complete: ?0`` stores the body and
    answers 201 with ``Location`` and ``Upload-Offset``; with ``?1`` (and a
    body matching ``Upload-Length`` if given) 200 with the JSON summary; without
    the header it is a plain upload of ``<name>``. ``HEAD /ietf/u/<id>`` 204
    with ``Upload-Offset``, ``Upload-Complete``, ``Upload-Length`` if known,
    ``Cache-Control: no-store``. ``PATCH`` needs ``Content-Type:
    application/partial-upload`` (415), ``Upload-Offset`` (a mismatch is 409
    with an ``application/problem+json`` body) and ``Upload-Complete``; bytes
    are appended as they arrive; appending to a complete upload or past
    Upload-Length is 400; ``?0`` answers 204 with ``Upload-Offset``, ``?1`` 200
    with the JSON summary. ``DELETE`` 204.

tus and IETF faults cannot ride on the query string (clients build the upload
URLs from ``Location``), so they are armed with :meth:`FaultServer.upload_faults`
by upload id or name; :meth:`FaultServer.forget_upload` loses an upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import email.message
import email.parser
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
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from bgtransfer.testing._data import BLOCK, gen_block_view, gen_bytes, parse_size

__all__ = ["FIXED_LAST_MODIFIED", "FaultServer", "IetfUpload", "RequestRecord", "TusUpload"]

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
    ignore_if_range: bool = False
    wrong_range: int | None = None
    full_as_206: bool = False
    range_as_200: bool = False
    bad_total: bool = False
    long_length: int = 0
    etag_change: bool = False
    no_etag: bool = False
    weak_etag: bool = False
    no_last_modified: bool = False
    no_accept_ranges: bool = False
    chunked: bool = False
    gzip: bool = False
    huge_headers: int = 0
    disposition: str | None = None
    changes_every: float | None = None

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
            ignore_if_range=flag("ignore_if_range"),
            wrong_range=integer("wrong_range"),
            full_as_206=flag("full_as_206"),
            range_as_200=flag("range_as_200"),
            bad_total=flag("bad_total"),
            long_length=integer("long_length") or 0,
            etag_change=flag("etag_change"),
            no_etag=flag("no_etag"),
            weak_etag=flag("weak_etag"),
            no_last_modified=flag("no_last_modified"),
            no_accept_ranges=flag("no_accept_ranges"),
            chunked=flag("chunked"),
            gzip=flag("gzip"),
            huge_headers=integer("huge_headers") or 0,
            disposition=q.get("disposition"),
            changes_every=_positive(flt("changes_every"), "changes_every"),
        )


# --------------------------------------------------------------------------- helpers


def _positive(value: float | None, name: str) -> float | None:
    if value is not None and value <= 0:
        raise _HttpError(400, f"knob {name} must be positive")
    return value


def _not_modified(headers: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
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
    if status in _EXTRA_REASONS:
        return _EXTRA_REASONS[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


_TEXT_SAFE = re.compile(r"^[\t\x20-\x7e]*$")


def _echo_answer(
    q: Mapping[str, str], payload: dict[str, object]
) -> tuple[int, str | None, bytes, list[tuple[str, str]]]:
    """What ``/echo`` answers: the request as JSON, or what its knobs ask for."""
    status_text = q.get("status", "200")
    if not _DIGITS.match(status_text) or not 200 <= int(status_text) <= 599:
        raise _HttpError(400, "status must be 200..599")
    headers = [("Content-Type", q.get("type", "application/json"))]
    for knob, name in (("set_cookie", "Set-Cookie"), ("set_cookie2", "Set-Cookie2")):
        if knob in q:
            headers.append((name, q[knob]))
    for value in (q.get("reason"), *(v for _, v in headers)):
        if value is not None and not _TEXT_SAFE.match(value):
            raise _HttpError(400, "echo knobs must be printable ASCII")
    if "gen" in q:
        try:
            size = parse_size(q["gen"])
        except ValueError as exc:
            raise _HttpError(400, str(exc)) from None
        if size > 64 << 20:
            raise _HttpError(400, "gen is at most 64M")
        body = gen_bytes(size, 0)
    else:
        body = q["body"].encode() if "body" in q else json.dumps(payload, indent=1).encode()
    if "digest" in q:
        of = body if q["digest"] == "1" else body + b"tampered"
        digest = base64.b64encode(hashlib.sha256(of).digest()).decode()
        headers.append(("Repr-Digest", f"sha-256=:{digest}:"))
    return int(status_text), q.get("reason"), body, headers


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


def _head_bytes(status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status) if reason is None else reason}"]
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


# --------------------------------------------------------------------------- uploads

TUS_VERSION: Final = "1.0.0"
TUS_MAX_SIZE: Final = 1 << 30
TUS_EXTENSIONS: Final = "creation,checksum,termination"
TUS_CHECKSUMS: Final = ("sha1", "sha256")
IETF_PARTIAL: Final = "application/partial-upload"
IETF_MISMATCH: Final = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
# Hash at most this much on the loop; larger payloads go to a thread (hashlib drops the GIL).
_HASH_INLINE: Final = 1 << 20
_EXTRA_REASONS: Final = {460: "Checksum Mismatch"}


@dataclass(eq=False)
class TusUpload:
    """One tus upload resource (``/tus/<id>``); ``data`` holds the bytes appended so far."""

    id: str
    name: str
    length: int
    metadata: dict[str, bytes]
    raw_metadata: str | None
    data: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.length


@dataclass(eq=False)
class IetfUpload:
    """One IETF resumable upload resource (``/ietf/u/<id>``) created at ``/ietf/<name>``."""

    id: str
    name: str
    length: int | None
    data: bytearray = field(default_factory=bytearray, repr=False)
    complete: bool = False

    @property
    def offset(self) -> int:
        return len(self.data)


@dataclass
class _UploadFaults:
    cut_after: int | None = None
    conflict_once: bool = False
    lose_once: bool = False
    status_once: int | None = None
    retry_after: str | None = None

    def empty(self) -> bool:
        return (
            self.cut_after is None
            and not self.conflict_once
            and not self.lose_once
            and self.status_once is None
        )


class _BodyError(_HttpError):
    """The request body's framing is broken: answer, then close the connection."""


class _Reject(_HttpError):
    """A text error response with extra headers (the request body is drained first)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(status, message)
        self.headers = headers


class _BodyStream:
    """A request body read incrementally (Content-Length or chunked).

    Every byte read is reported to ``on_bytes`` under the names in ``count_as`` as
    soon as it arrives, so a client that dies mid-body leaves an exact count.
    ``Expect: 100-continue`` is answered on the first read, never before: a
    request rejected on its headers alone gets its final answer without it.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: Mapping[str, str],
        on_bytes: Callable[[tuple[str, ...], int], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_bytes = on_bytes
        self.count_as: tuple[str, ...] = ()
        self.expect_continue = headers.get("expect", "").strip().lower() == "100-continue"
        self.continued = False
        self.received = 0
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        self.chunked = False
        self.length: int | None = None  # declared Content-Length
        self.remaining = 0  # of the body (Content-Length) or of the current chunk
        if te is not None:
            if te.strip().lower() != "chunked":
                raise _HttpError(501, f"unsupported Transfer-Encoding {te!r}")
            self.chunked = True
        elif cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not _DIGITS.match(next(iter(values))):
                raise _HttpError(400, "bad Content-Length")
            self.length = self.remaining = int(values.pop())
        self.done = not self.chunked and self.remaining == 0
        if self.done:
            self.expect_continue = False

    @property
    def unanswered_continue(self) -> bool:
        """True while the client still waits for 100 Continue before sending the body."""
        return self.expect_continue and not self.continued and not self.done

    async def _continue(self) -> None:
        if self.expect_continue and not self.continued:
            self.continued = True
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._writer.drain()

    async def _next_chunk(self) -> None:
        try:
            line = await self._reader.readuntil(b"\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            raise _BodyError(400, "bad chunk header") from None
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BodyError(400, "bad chunk size") from None
        if size < 0:
            raise _BodyError(400, "bad chunk size")
        if size == 0:
            try:
                while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
            except (asyncio.LimitOverrunError, ValueError):
                raise _BodyError(400, "bad chunked trailer") from None
            self.done = True
        self.remaining = size

    async def at_end(self) -> bool:
        """Whether the whole body has arrived (may read the next chunk header to tell)."""
        if self.done:
            return True
        await self._continue()
        if self.chunked and self.remaining == 0:
            await self._next_chunk()
        return self.done

    async def read(self, limit: int | None = None) -> bytes:
        """The next piece of the body (at most ``limit`` bytes); b"" at its end.

        Raises ``asyncio.IncompleteReadError`` (or a ConnectionError) when the
        client goes away first; the bytes before that were already counted.
        """
        if await self.at_end():
            return b""
        n = min(self.remaining, CHUNK)
        if limit is not None:
            assert limit > 0
            n = min(n, limit)
        data = await self._reader.read(n)
        if not data:
            raise asyncio.IncompleteReadError(b"", self.remaining)
        self.remaining -= len(data)
        self.received += len(data)
        if self.count_as:
            self._on_bytes(self.count_as, len(data))
        if self.remaining == 0:
            if self.chunked:
                if await self._reader.readexactly(2) != b"\r\n":
                    raise _BodyError(400, "chunk not followed by CRLF")
            else:
                self.done = True
        return data

    async def drain(self) -> None:
        while await self.read():
            pass


@dataclass
class _Part:
    field_name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """(lower-cased media type, parameters) of a Content-Type value ("" when absent)."""
    if not value:
        return "", {}
    msg = email.message.Message()
    msg["content-type"] = value
    params: dict[str, str] = {}
    for key in ("boundary", "charset"):
        raw = msg.get_param(key)
        if raw is not None:
            params[key] = email.utils.collapse_rfc2231_value(raw)
    return value.split(";", 1)[0].strip().lower(), params


def _parse_part(raw: bytes) -> _Part:
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        sep = raw.find(b"\r\n\r\n")
        if sep < 0:
            raise ValueError("multipart part without a blank line after its headers")
        head, content = raw[:sep], raw[sep + 4 :]
    # Browsers send UTF-8 file names raw inside the quotes.
    msg = email.parser.HeaderParser().parsestr(head.decode("utf-8", "replace") + "\r\n\r\n")
    # get_param decodes RFC 2231 forms too (filename*=UTF-8''...).
    field_name = msg.get_param("name", header="content-disposition")
    filename = msg.get_param("filename", header="content-disposition")
    return _Part(
        field_name=None if field_name is None else email.utils.collapse_rfc2231_value(field_name),
        filename=None if filename is None else email.utils.collapse_rfc2231_value(filename),
        content_type=msg.get("content-type"),
        data=content,
    )


def _parse_multipart(data: bytes, boundary: str) -> list[_Part]:
    """Split a multipart body (RFC 2046 section 5.1.1); ValueError when malformed."""
    delim = b"--" + boundary.encode("latin-1")
    if data.startswith(delim):
        pos = 0
    else:
        i = data.find(b"\r\n" + delim)
        if i < 0:
            raise ValueError("multipart body without its boundary")
        pos = i + 2
    parts: list[_Part] = []
    while True:
        pos += len(delim)
        if data[pos : pos + 2] == b"--":
            return parts
        eol = data.find(b"\r\n", pos)
        if eol < 0 or data[pos:eol].strip(b" \t"):
            raise ValueError("malformed multipart boundary line")
        start = eol + 2
        nxt = data.find(b"\r\n" + delim, start)
        if nxt < 0:
            raise ValueError("multipart body is not terminated")
        parts.append(_parse_part(data[start:nxt]))
        pos = nxt + 2


def _parse_tus_metadata(value: str | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if value is None or not value.strip():
        return out
    for pair in value.split(","):
        key, _, encoded = pair.strip().partition(" ")
        if not key or not _TOKEN.match(key):
            raise _HttpError(400, f"bad Upload-Metadata key {key!r}")
        try:
            out[key] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _HttpError(400, f"Upload-Metadata value of {key!r} is not base64") from None
    return out


def _sf_boolean(value: str | None, header: str) -> bool | None:
    """A structured-field boolean (RFC 8941); None when absent, 400 when malformed."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    if item == "?1":
        return True
    if item == "?0":
        return False
    raise _HttpError(400, f"{header} must be ?0 or ?1")


def _int_header(headers: Mapping[str, str], name: str, *, required: bool) -> int | None:
    raw = headers.get(name.lower())
    if raw is None:
        if required:
            raise _HttpError(400, f"missing {name}")
        return None
    raw = raw.strip()
    if not _DIGITS.match(raw):
        raise _HttpError(400, f"bad {name}: {raw!r}")
    return int(raw)


def _names(up: TusUpload | IetfUpload) -> tuple[str, ...]:
    return _names_of(up.name, up.id)


def _names_of(name: str, uid: str) -> tuple[str, ...]:
    return (name,) if name == uid else (name, uid)


def _tus_checksum(value: str | None) -> tuple[str, bytes] | None:
    """(algorithm, digest) of an Upload-Checksum header; 400 when unusable."""
    if value is None:
        return None
    algo, _, encoded = value.strip().partition(" ")
    algo = algo.lower()
    if algo not in TUS_CHECKSUMS:
        raise _HttpError(400, f"unsupported checksum algorithm {algo!r}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _HttpError(400, "Upload-Checksum digest is not base64") from None
    return algo, digest


async def _sha256_hex(data: bytes | bytearray) -> str:
    if len(data) <= _HASH_INLINE:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


async def _summary(name: str, data: bytes | bytearray, **extra: object) -> bytes:
    payload: dict[str, object] = {
        "name": name,
        "size": len(data),
        "sha256": await _sha256_hex(data),
        **extra,
    }
    return json.dumps(payload).encode()


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
        self._born = time.monotonic()
        # Uploads; mutated on the server loop under _lock, read by tests from other threads.
        self.uploads: dict[str, bytes] = {}
        self.upload_fields: dict[str, dict[str, str]] = {}
        self.tus_uploads: dict[str, TusUpload] = {}
        self.ietf_uploads: dict[str, IetfUpload] = {}
        self._received: dict[str, int] = {}
        self._plain_done: dict[str, list[str]] = {}  # name -> keys it stored in uploads
        self._tus_names: dict[str, str] = {}  # name -> id of the latest upload with it
        self._ietf_names: dict[str, str] = {}
        # id -> name of every tus/IETF upload ever created, so bytes sent to a lost
        # upload's URL still count for its name.
        self._id_names: dict[str, str] = {}
        self._upload_faults: dict[str, _UploadFaults] = {}
        self._servers: list[asyncio.Server] = []
        self._conns: set[_Conn] = set()
        self._conn_ids = itertools.count(1)
        self._closing = False
        # /r and /gen responses being sent right now, by connection
        self._serving: set[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = set()
        self._peak_serving = 0
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

    def peak_concurrency(self, *, reset: bool = False) -> int:
        """The most ``/r`` and ``/gen`` responses this server was sending at one time (since
        the start or the last reset): how many connections a client really used at once.

        A response whose client has closed the connection is not counted, though its
        handler may not have noticed yet (a rate-limited body notices at its next write).
        """
        with self._lock:
            peak = self._peak_serving
            if reset:
                self._peak_serving = 0
            return peak

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

    # ------------------------------------------------------------------ uploads

    def upload_received(self, name: str) -> int:
        """Request-body bytes received for this upload name so far, over all requests.

        Counted as they arrive (so a cut or abandoned request counts what got
        through) for plain, multipart, tus and IETF uploads alike, whether or not
        they were kept. tus uploads count under their id and, when the creation
        carried a ``filename`` metadata value, under that too; IETF uploads count
        under the target name and the upload id. Bytes sent to the URL of an
        upload the server lost or deleted still count for it.
        """
        with self._lock:
            return self._received.get(name, 0)

    def tus_data(self, name: str) -> bytes:
        """Bytes of the latest tus upload with this id or name (KeyError if none / forgotten)."""
        with self._lock:
            up = self._find_tus(name)
            if up is None:
                raise KeyError(f"no tus upload {name!r}")
            return bytes(up.data)

    def ietf_data(self, name: str) -> bytes:
        """Bytes of the latest IETF upload with this id or target name (KeyError if none)."""
        with self._lock:
            up = self._find_ietf(name)
            if up is None:
                raise KeyError(f"no IETF upload {name!r}")
            return bytes(up.data)

    def upload_complete(self, name: str) -> bool:
        """Whether a plain/multipart upload of this name finished, or the latest tus/IETF
        upload with this id or name has all its bytes."""
        with self._lock:
            if name in self._plain_done:
                return True
            tus = self._find_tus(name)
            if tus is not None and tus.complete:
                return True
            ietf = self._find_ietf(name)
            return ietf is not None and ietf.complete

    def forget_upload(self, name: str) -> None:
        """Lose every upload with this id or name: tus/IETF HEAD and PATCH then get 404,
        and stored plain/multipart results disappear. ``upload_received`` is kept."""
        with self._lock:
            self._forget_locked(name)

    def upload_faults(
        self,
        name_or_id: str,
        *,
        cut_after: int | None = None,
        conflict_once: bool = False,
        lose_once: bool = False,
        status_once: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Arm faults for tus/IETF uploads with this id or name (replacing earlier ones).

        ``cut_after=N``: the request whose body would take the upload past N bytes
        keeps the bytes up to N and the connection is closed without an answer
        (once; IETF creation requests count too). ``conflict_once``: the next
        PATCH gets 409. ``lose_once``: the next HEAD or PATCH gets 404 and the
        upload is forgotten. ``status_once=CODE``: the next PATCH gets that status
        (with ``Retry-After: retry_after`` if given) and has no effect. Checked in
        the order lose, status, conflict. No arguments disarms everything.
        """
        if status_once is not None and not 200 <= status_once <= 599:
            raise ValueError("status_once must be in 200..599")
        if cut_after is not None and cut_after < 0:
            raise ValueError("cut_after must not be negative")
        if retry_after is not None and ("\r" in retry_after or "\n" in retry_after):
            raise ValueError("retry_after must not contain line breaks")
        faults = _UploadFaults(cut_after, conflict_once, lose_once, status_once, retry_after)
        with self._lock:
            if faults.empty():
                self._upload_faults.pop(name_or_id, None)
            else:
                self._upload_faults[name_or_id] = faults

    def clear_uploads(self) -> None:
        """Forget all uploads, received-byte counts and armed upload faults."""
        with self._lock:
            self.uploads.clear()
            self.upload_fields.clear()
            self.tus_uploads.clear()
            self.ietf_uploads.clear()
            self._received.clear()
            self._plain_done.clear()
            self._tus_names.clear()
            self._ietf_names.clear()
            self._id_names.clear()
            self._upload_faults.clear()

    # Callers of the *_locked / _find_* helpers hold self._lock.

    def _find_tus(self, name: str) -> TusUpload | None:
        up = self.tus_uploads.get(name)
        if up is None and name in self._tus_names:
            up = self.tus_uploads.get(self._tus_names[name])
        return up

    def _find_ietf(self, name: str) -> IetfUpload | None:
        up = self.ietf_uploads.get(name)
        if up is None and name in self._ietf_names:
            up = self.ietf_uploads.get(self._ietf_names[name])
        return up

    def _forget_locked(self, name: str) -> None:
        for key in self._plain_done.pop(name, []):
            self.uploads.pop(key, None)
        self.uploads.pop(name, None)
        self.upload_fields.pop(name, None)
        for uploads in (self.tus_uploads, self.ietf_uploads):
            for uid in [u.id for u in uploads.values() if name in (u.id, u.name)]:
                del uploads[uid]

    def _drop_locked(self, up: TusUpload | IetfUpload) -> None:
        if isinstance(up, TusUpload):
            if self.tus_uploads.get(up.id) is up:
                del self.tus_uploads[up.id]
        elif self.ietf_uploads.get(up.id) is up:
            del self.ietf_uploads[up.id]

    def _count(self, names: tuple[str, ...], n: int) -> None:
        with self._lock:
            for name in names:
                self._received[name] = self._received.get(name, 0) + n

    def _faults_key(self, up: TusUpload | IetfUpload) -> str | None:
        for key in (up.id, up.name):
            if key in self._upload_faults:
                return key
        return None

    def _take_fault(self, up: TusUpload | IetfUpload, kind: str) -> _UploadFaults | None:
        """Consume one armed ``lose``/``status``/``conflict`` fault; a copy of it, or None."""
        with self._lock:
            key = self._faults_key(up)
            if key is None:
                return None
            faults = self._upload_faults[key]
            snapshot = dataclasses.replace(faults)
            if kind == "lose" and faults.lose_once:
                faults.lose_once = False
            elif kind == "status" and faults.status_once is not None:
                faults.status_once = None
            elif kind == "conflict" and faults.conflict_once:
                faults.conflict_once = False
            else:
                return None
            if faults.empty():
                del self._upload_faults[key]
            if kind == "lose":
                self._drop_locked(up)
            return snapshot

    def _cut_at(self, up: TusUpload | IetfUpload) -> int | None:
        with self._lock:
            key = self._faults_key(up)
            return None if key is None else self._upload_faults[key].cut_after

    def _disarm_cut(self, up: TusUpload | IetfUpload) -> None:
        with self._lock:
            key = self._faults_key(up)
            if key is not None:
                self._upload_faults[key].cut_after = None
                if self._upload_faults[key].empty():
                    del self._upload_faults[key]

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
        if req.path.startswith(("/upload/", "/tus/", "/ietf/")) or req.path == "/tus":
            return await self._serve_upload(reader, writer, req)
        try:
            body_length = await self._read_body(reader, writer, req)
        except _HttpError as err:
            await self._send_text(writer, err.status, err.message, keep=False)
            return False
        keep = req.keep_alive
        head_only = req.method == "HEAD"
        try:
            if req.path.startswith(("/r/", "/gen/")):
                pair = (reader, writer)
                with self._lock:
                    self._serving.add(pair)
                    live = sum(
                        1
                        for r, w in self._serving
                        if not r.at_eof() and not w.transport.is_closing()
                    )
                    self._peak_serving = max(self._peak_serving, live)
                try:
                    return await self._serve_resource(writer, req, keep)
                finally:
                    with self._lock:
                        self._serving.discard(pair)
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
                status, reason, body, hdrs = _echo_answer(req.query, payload)
                await self._send_simple(
                    writer, status, body, hdrs, keep=keep, head_only=head_only, reason=reason
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
            if knobs.changes_every is not None:
                version = int((time.monotonic() - self._born) / knobs.changes_every)
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

    # ------------------------------------------------------------------ uploads

    def _base_for(self, host: str) -> str:
        if self._other_port is not None and host == "127.0.0.2" and self.host != "127.0.0.2":
            return f"http://127.0.0.2:{self._other_port}"
        return self.base_url

    async def _serve_upload(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: _Request
    ) -> bool:
        try:
            body = _BodyStream(reader, writer, req.headers, self._count)
        except _HttpError as err:
            await self._send_text(writer, err.status, err.message, keep=False)
            return False
        tus = req.path == "/tus" or req.path.startswith("/tus/")
        try:
            if req.path.startswith("/upload/"):
                return await self._serve_plain(writer, req, body, req.path[len("/upload/") :])
            if tus:
                return await self._serve_tus(writer, req, body)
            return await self._serve_ietf(writer, req, body)
        except _BodyError as err:
            await self._send_text(writer, err.status, err.message, keep=False)
            return False
        except _HttpError as err:
            hdrs = [("Content-Type", "text/plain; charset=utf-8")]
            if tus and req.method != "OPTIONS":
                hdrs.append(("Tus-Resumable", TUS_VERSION))
            if isinstance(err, _Reject):
                hdrs.extend(err.headers)
            return await self._answer(
                writer,
                req,
                body,
                err.status,
                (err.message + "\n").encode(),
                hdrs,
                head_only=req.method == "HEAD",
            )

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        req: _Request,
        body: _BodyStream,
        status: int,
        payload: bytes,
        headers: list[tuple[str, str]],
        *,
        head_only: bool = False,
    ) -> bool:
        """Consume what is left of the request body (counting it), then respond.

        A client still waiting for ``100 Continue`` is answered at once instead and
        the connection closed, since it may or may not send the body after all.
        """
        keep = req.keep_alive
        if body.unanswered_continue:
            keep = False
        elif not body.done:
            try:
                await body.drain()
            except _BodyError as err:
                await self._send_text(writer, err.status, err.message, keep=False)
                return False
        await self._send_simple(writer, status, payload, headers, keep=keep, head_only=head_only)
        return keep

    @staticmethod
    def _cut(writer: asyncio.StreamWriter) -> bool:
        # Unread request bytes make the kernel send an RST rather than a FIN: either
        # way the client sees the connection die without an answer.
        writer.transport.close()
        return False

    async def _append(
        self,
        body: _BodyStream,
        data: bytearray,
        *,
        limit: int | None,
        cut_at: int | None,
        on_piece: Callable[[bytes], object] | None = None,
    ) -> str:
        """Append the request body to ``data`` as it arrives.

        Returns ``"done"``; ``"cut"`` when ``data`` reached ``cut_at`` with more body
        to come (the caller closes the connection); ``"overflow"`` when the body
        would take ``data`` past ``limit`` (the rest is drained; the caller rolls back).
        """
        while True:
            if cut_at is not None and len(data) >= cut_at and not await body.at_end():
                return "cut"
            piece = await body.read(None if cut_at is None else cut_at - len(data))
            if not piece:
                return "done"
            if limit is not None and len(data) + len(piece) > limit:
                await body.drain()
                return "overflow"
            with self._lock:
                data.extend(piece)
            if on_piece is not None:
                on_piece(piece)

    def _truncate(self, data: bytearray, size: int) -> None:
        with self._lock:
            del data[size:]

    # plain and multipart

    async def _serve_plain(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream, name: str
    ) -> bool:
        if not name:
            raise _HttpError(404, "uploads go to /upload/<name>")
        body.count_as = (name,)
        if req.method not in ("PUT", "POST"):
            raise _Reject(405, "method not allowed", [("Allow", "PUT, POST")])
        knobs = _Knobs.parse(req.query)
        failing = knobs.times is None or self._hit(req.fault_key) <= knobs.times
        mime, params = _content_type(req.headers.get("content-type"))
        boundary: str | None = None
        if mime == "multipart/form-data":
            boundary = params.get("boundary")
            if not boundary:
                raise _HttpError(400, "multipart/form-data without a boundary")
        data = bytearray()
        hasher = hashlib.sha256()
        cut = knobs.cut if failing else None
        if await self._append(body, data, limit=None, cut_at=cut, on_piece=hasher.update) == "cut":
            return self._cut(writer)
        if failing and knobs.stall:
            await asyncio.sleep(knobs.stall)
        if failing and knobs.status is not None:
            hdrs = [("Content-Type", "text/plain")]
            if knobs.retry_after is not None:
                hdrs.append(("Retry-After", knobs.retry_after))
            if knobs.retry_after_in is not None:
                hdrs.append(("Retry-After", _http_date(knobs.retry_after_in)))
            page = b"" if knobs.status in (204, 304) else f"error page {knobs.status}".encode()
            return await self._answer(writer, req, body, knobs.status, page, hdrs)
        if boundary is not None:
            return await self._store_multipart(
                writer, req, body, name, bytes(data), boundary, hasher.hexdigest()
            )
        stored = bytes(data)
        with self._lock:
            new = name not in self.uploads
            for key in self._plain_done.pop(name, []):
                self.uploads.pop(key, None)
            self.uploads[name] = stored
            self._plain_done[name] = [name]
        payload = json.dumps({"name": name, "size": len(stored), "sha256": hasher.hexdigest()})
        return await self._answer(
            writer,
            req,
            body,
            201 if req.method == "PUT" and new else 200,
            payload.encode(),
            [("Content-Type", "application/json")],
        )

    async def _store_multipart(
        self,
        writer: asyncio.StreamWriter,
        req: _Request,
        body: _BodyStream,
        name: str,
        data: bytes,
        boundary: str,
        digest: str,
    ) -> bool:
        try:
            parts = _parse_multipart(data, boundary)
        except ValueError as exc:
            raise _HttpError(400, f"bad multipart body: {exc}") from None
        files: dict[str, bytes] = {}
        fields: dict[str, str] = {}
        listing: list[dict[str, object]] = []
        for part in parts:
            if part.field_name is None:
                raise _HttpError(400, "multipart part without a name")
            if part.filename is not None:
                files[f"{name}/{part.field_name}"] = part.data
                listing.append(
                    {
                        "field": part.field_name,
                        "filename": part.filename,
                        "content_type": part.content_type,
                        "size": len(part.data),
                        "sha256": await _sha256_hex(part.data),
                    }
                )
            else:
                charset = _content_type(part.content_type)[1].get("charset", "utf-8")
                try:
                    value = part.data.decode(charset, "replace")
                except LookupError:
                    value = part.data.decode("utf-8", "replace")
                fields[part.field_name] = value
                listing.append({"field": part.field_name, "size": len(part.data)})
        with self._lock:
            for key in self._plain_done.pop(name, []):
                self.uploads.pop(key, None)
            self.uploads.update(files)
            self.upload_fields[name] = dict(fields)
            self._plain_done[name] = list(files)
        payload = {
            "name": name,
            "size": len(data),
            "sha256": digest,
            "parts": listing,
            "fields": fields,
        }
        return await self._answer(
            writer,
            req,
            body,
            200,
            json.dumps(payload).encode(),
            [("Content-Type", "application/json")],
        )

    # tus

    async def _serve_tus(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream
    ) -> bool:
        method = req.method
        override = req.headers.get("x-http-method-override")
        if method == "POST" and override:
            method = override.strip().upper()
        uid = req.path[len("/tus") :].strip("/")
        if method == "OPTIONS":
            caps = [
                ("Tus-Resumable", TUS_VERSION),
                ("Tus-Version", TUS_VERSION),
                ("Tus-Extension", TUS_EXTENSIONS),
                ("Tus-Checksum-Algorithm", ",".join(TUS_CHECKSUMS)),
                ("Tus-Max-Size", str(TUS_MAX_SIZE)),
            ]
            return await self._answer(writer, req, body, 204, b"", caps)
        if req.headers.get("tus-resumable", "").strip() != TUS_VERSION:
            raise _Reject(
                412, "missing or unsupported Tus-Resumable", [("Tus-Version", TUS_VERSION)]
            )
        if not uid:
            if method != "POST":
                raise _Reject(405, "method not allowed", [("Allow", "OPTIONS, POST")])
            return await self._tus_create(writer, req, body)
        with self._lock:
            up = self.tus_uploads.get(uid)
            lost_name = self._id_names.get(uid)
        if up is None:
            if lost_name is not None:
                body.count_as = _names_of(lost_name, uid)
            raise _HttpError(404, f"no tus upload {uid!r}")
        body.count_as = _names(up)
        if method == "HEAD":
            if self._take_fault(up, "lose") is not None:
                raise _HttpError(404, "upload lost")
            hdrs = [
                ("Tus-Resumable", TUS_VERSION),
                ("Upload-Offset", str(up.offset)),
                ("Upload-Length", str(up.length)),
                ("Cache-Control", "no-store"),
            ]
            if up.raw_metadata:
                hdrs.append(("Upload-Metadata", up.raw_metadata))
            return await self._answer(writer, req, body, 200, b"", hdrs, head_only=True)
        if method == "PATCH":
            return await self._tus_patch(writer, req, body, up)
        if method == "DELETE":
            with self._lock:
                self._drop_locked(up)
            return await self._answer(writer, req, body, 204, b"", [("Tus-Resumable", TUS_VERSION)])
        raise _Reject(405, "method not allowed", [("Allow", "OPTIONS, HEAD, PATCH, DELETE")])

    async def _tus_create(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream
    ) -> bool:
        if "upload-defer-length" in req.headers:
            raise _HttpError(400, "Upload-Defer-Length is not supported")
        length = _int_header(req.headers, "Upload-Length", required=True)
        assert length is not None
        if length > TUS_MAX_SIZE:
            raise _Reject(413, "Upload-Length too large", [("Tus-Max-Size", str(TUS_MAX_SIZE))])
        raw_metadata = req.headers.get("upload-metadata")
        metadata = _parse_tus_metadata(raw_metadata)
        uid = uuid.uuid4().hex
        filename = metadata.get("filename")
        name = filename.decode("utf-8", "replace") if filename else uid
        up = TusUpload(uid, name, length, metadata, raw_metadata)
        with self._lock:
            self.tus_uploads[uid] = up
            self._tus_names[name] = uid
            self._id_names[uid] = name
        body.count_as = _names(up)
        hdrs = [
            ("Location", f"{self._base_for(req.host)}/tus/{uid}"),
            ("Tus-Resumable", TUS_VERSION),
        ]
        return await self._answer(writer, req, body, 201, b"", hdrs)

    async def _tus_patch(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream, up: TusUpload
    ) -> bool:
        if self._take_fault(up, "lose") is not None:
            raise _HttpError(404, "upload lost")
        injected = self._take_fault(up, "status")
        if injected is not None:
            return await self._injected_status(
                writer, req, body, injected, [("Tus-Resumable", TUS_VERSION)]
            )
        if self._take_fault(up, "conflict") is not None:
            raise _HttpError(409, "Upload-Offset conflict (injected)")
        if _content_type(req.headers.get("content-type"))[0] != "application/offset+octet-stream":
            raise _HttpError(415, "PATCH needs Content-Type: application/offset+octet-stream")
        offset = _int_header(req.headers, "Upload-Offset", required=True)
        if offset != up.offset:
            raise _HttpError(409, f"Upload-Offset {offset} is not the current offset {up.offset}")
        checksum = _tus_checksum(req.headers.get("upload-checksum"))
        if body.length is not None and offset + body.length > up.length:
            raise _HttpError(400, "body would go past Upload-Length")
        hasher = None if checksum is None else hashlib.new(checksum[0])
        cut = self._cut_at(up)
        outcome = await self._append(
            body,
            up.data,
            limit=up.length,
            cut_at=None if cut is None else max(cut, offset),
            on_piece=None if hasher is None else hasher.update,
        )
        if outcome == "cut":
            self._disarm_cut(up)
            return self._cut(writer)
        if outcome == "overflow":
            self._truncate(up.data, offset)
            raise _HttpError(400, "body went past Upload-Length")
        if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
            self._truncate(up.data, offset)
            raise _HttpError(460, "Upload-Checksum does not match the body")
        hdrs = [("Tus-Resumable", TUS_VERSION), ("Upload-Offset", str(up.offset))]
        return await self._answer(writer, req, body, 204, b"", hdrs)

    async def _injected_status(
        self,
        writer: asyncio.StreamWriter,
        req: _Request,
        body: _BodyStream,
        faults: _UploadFaults,
        headers: list[tuple[str, str]],
    ) -> bool:
        status = faults.status_once
        assert status is not None
        hdrs = [*headers, ("Content-Type", "text/plain")]
        if faults.retry_after is not None:
            hdrs.append(("Retry-After", faults.retry_after))
        page = b"" if status in (204, 304) else f"error page {status}".encode()
        return await self._answer(writer, req, body, status, page, hdrs)

    # IETF resumable upload (draft-ietf-httpbis-resumable-upload-05)

    async def _serve_ietf(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream
    ) -> bool:
        rest = req.path[len("/ietf/") :]
        if rest.startswith("u/"):
            return await self._ietf_resource(writer, req, body, rest[2:])
        if not rest:
            raise _HttpError(404, "upload targets are /ietf/<name>")
        body.count_as = (rest,)
        if req.method != "POST":
            raise _Reject(405, "method not allowed", [("Allow", "POST")])
        complete = _sf_boolean(req.headers.get("upload-complete"), "Upload-Complete")
        if complete is None:
            return await self._serve_plain(writer, req, body, rest)
        length = _int_header(req.headers, "Upload-Length", required=False)
        if (
            length is not None
            and body.length is not None
            and (body.length > length or (complete and body.length != length))
        ):
            raise _HttpError(400, "request body does not agree with Upload-Length")
        up = IetfUpload(uuid.uuid4().hex, rest, length)
        with self._lock:
            self.ietf_uploads[up.id] = up
            self._ietf_names[up.name] = up.id
            self._id_names[up.id] = up.name
        body.count_as = _names(up)
        cut = self._cut_at(up)
        outcome = await self._append(body, up.data, limit=length, cut_at=cut)
        if outcome == "cut":
            self._disarm_cut(up)
            return self._cut(writer)
        if outcome == "overflow" or (complete and length is not None and up.offset != length):
            with self._lock:
                self._drop_locked(up)
            raise _HttpError(400, "request body does not agree with Upload-Length")
        if complete:
            return await self._ietf_finish(writer, req, body, up)
        hdrs = [
            ("Location", f"{self._base_for(req.host)}/ietf/u/{up.id}"),
            ("Upload-Offset", str(up.offset)),
        ]
        return await self._answer(writer, req, body, 201, b"", hdrs)

    async def _ietf_resource(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream, uid: str
    ) -> bool:
        with self._lock:
            up = self.ietf_uploads.get(uid)
            lost_name = self._id_names.get(uid)
        if up is None:
            if lost_name is not None:
                body.count_as = _names_of(lost_name, uid)
            raise _HttpError(404, f"no upload {uid!r}")
        body.count_as = _names(up)
        if req.method == "HEAD":
            if self._take_fault(up, "lose") is not None:
                raise _HttpError(404, "upload lost")
            hdrs = [
                ("Upload-Offset", str(up.offset)),
                ("Upload-Complete", "?1" if up.complete else "?0"),
            ]
            if up.length is not None:
                hdrs.append(("Upload-Length", str(up.length)))
            hdrs.append(("Cache-Control", "no-store"))
            return await self._answer(writer, req, body, 204, b"", hdrs, head_only=True)
        if req.method == "PATCH":
            return await self._ietf_patch(writer, req, body, up)
        if req.method == "DELETE":
            with self._lock:
                self._drop_locked(up)
            return await self._answer(writer, req, body, 204, b"", [])
        raise _Reject(405, "method not allowed", [("Allow", "HEAD, PATCH, DELETE")])

    async def _ietf_patch(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream, up: IetfUpload
    ) -> bool:
        if self._take_fault(up, "lose") is not None:
            raise _HttpError(404, "upload lost")
        injected = self._take_fault(up, "status")
        if injected is not None:
            return await self._injected_status(writer, req, body, injected, [])
        if self._take_fault(up, "conflict") is not None:
            raw = req.headers.get("upload-offset", "").strip()
            provided = int(raw) if _DIGITS.match(raw) else None
            return await self._ietf_conflict(writer, req, body, up, provided)
        if _content_type(req.headers.get("content-type"))[0] != IETF_PARTIAL:
            raise _HttpError(415, f"PATCH needs Content-Type: {IETF_PARTIAL}")
        offset = _int_header(req.headers, "Upload-Offset", required=True)
        assert offset is not None
        complete = _sf_boolean(req.headers.get("upload-complete"), "Upload-Complete")
        if complete is None:
            raise _HttpError(400, "missing Upload-Complete")
        if up.complete:
            raise _HttpError(400, "upload is already complete")
        if offset != up.offset:
            return await self._ietf_conflict(writer, req, body, up, offset)
        length = _int_header(req.headers, "Upload-Length", required=False)
        if length is not None:
            if up.length is not None and length != up.length:
                raise _HttpError(400, "Upload-Length differs from the upload's length")
            if length < offset:
                raise _HttpError(400, "Upload-Length is less than the upload's offset")
            with self._lock:
                up.length = length
        if up.length is not None and body.length is not None:
            end = offset + body.length
            if end > up.length or (complete and end != up.length):
                raise _HttpError(400, "request body does not agree with Upload-Length")
        cut = self._cut_at(up)
        outcome = await self._append(
            body, up.data, limit=up.length, cut_at=None if cut is None else max(cut, offset)
        )
        if outcome == "cut":
            self._disarm_cut(up)
            return self._cut(writer)
        if outcome == "overflow" or (complete and up.length is not None and up.offset != up.length):
            self._truncate(up.data, offset)
            raise _HttpError(400, "request body does not agree with Upload-Length")
        if complete:
            return await self._ietf_finish(writer, req, body, up)
        return await self._answer(writer, req, body, 204, b"", [("Upload-Offset", str(up.offset))])

    async def _ietf_conflict(
        self,
        writer: asyncio.StreamWriter,
        req: _Request,
        body: _BodyStream,
        up: IetfUpload,
        provided: int | None,
    ) -> bool:
        problem = {
            "type": IETF_MISMATCH,
            "title": "offset from request does not match offset of resource",
            "expected-offset": up.offset,
            "provided-offset": provided,
        }
        hdrs = [("Content-Type", "application/problem+json")]
        return await self._answer(writer, req, body, 409, json.dumps(problem).encode(), hdrs)

    async def _ietf_finish(
        self, writer: asyncio.StreamWriter, req: _Request, body: _BodyStream, up: IetfUpload
    ) -> bool:
        with self._lock:
            up.complete = True
            if up.length is None:
                up.length = up.offset
        hdrs = [
            ("Content-Type", "application/json"),
            ("Upload-Complete", "?1"),
            ("Upload-Offset", str(up.offset)),
        ]
        payload = await _summary(up.name, up.data)
        return await self._answer(writer, req, body, 200, payload, hdrs)

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
        if knobs.disposition is not None:
            extra.append(("Content-Disposition", knobs.disposition))

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
        if _not_modified(req.headers, etag, last_modified):
            hdrs = [(k, v) for k, v in (("ETag", etag), ("Last-Modified", last_modified)) if v]
            await self._send_simple(writer, 304, b"", [*hdrs, *extra], keep=keep)
            return keep

        status, start, end = 200, 0, size
        content_range: str | None = None
        range_header = req.headers.get("range")
        if knobs.full_as_206:
            status = 206
            content_range = f"bytes 0-{size - 1}/{size}" if size else f"bytes */{size}"
        elif (
            range_header is not None
            and not knobs.ignore_range
            and (
                knobs.ignore_if_range
                or self._if_range_ok(req.headers.get("if-range"), etag, last_modified)
            )
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
        if knobs.long_length > 0:
            keep = False  # the promised bytes never come: the close ends the body
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
            ("Transfer-Encoding", "chunked")
            if chunked
            else ("Content-Length", str(length + knobs.long_length))
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
        reason: str | None = None,
    ) -> None:
        hdrs = list(headers)
        if status not in (204, 304):
            hdrs.append(("Content-Length", str(len(body))))
        hdrs.append(("Date", _http_date()))
        if not keep:
            hdrs.append(("Connection", "close"))
        writer.write(_head_bytes(status, hdrs, reason) + (b"" if head_only else body))
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
