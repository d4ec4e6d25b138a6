"""HTTP/1.1 framing for the fault server: request heads, request bodies, responses.

Only what a misbehaving test server needs: a strict request-head parser (400 on
malformed heads, 431 over 64 KiB), request bodies read incrementally (Content-Length
or chunked, ``Expect: 100-continue``), and responses written straight to the stream
so the fault code above can stop, stall or reset them at any byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import email.utils
import http
import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MAX_HEAD: Final = 64 * 1024
CHUNK: Final = 64 * 1024
# Generous, so an idle keep-alive client in a slow test is not cut off, but
# finite, so the CLI does not accumulate dead connections forever.
IDLE_TIMEOUT: Final = 300.0
# Bound on how long a cut/rst waits for the peer to take delivery of the bytes
# before the fault; a client that never reads must not wedge the server.
DELIVERY_TIMEOUT: Final = 2.0
EXTRA_REASONS: Final = {460: "Checksum Mismatch"}

DIGITS = re.compile(r"^[0-9]+$")

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

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


class HttpError(Exception):
    """A response to send instead of the normal one, after which we close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Reset(Exception):
    """The connection was deliberately reset; nothing more may be written."""


@dataclass
class Request:
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


def reason_phrase(status: int) -> str:
    if status in EXTRA_REASONS:
        return EXTRA_REASONS[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def http_date(offset_seconds: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return email.utils.format_datetime(when, usegmt=True)


def head_bytes(status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status) if reason is None else reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def unsent_bytes(sock: socket.socket) -> int:
    if _TIOCOUTQ is None:
        return 0
    try:
        out = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return 0
    return int(struct.unpack("i", out)[0])


def parse_head(head: bytes, host: str) -> Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not TOKEN.match(method) or not target or not re.match(r"^HTTP/1\.[0-9]$", version):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise HttpError(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.match(name):
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    split = urlsplit(target)
    raw_path = split.path or "/"
    return Request(
        method=method,
        target=target,
        version=version,
        path=unquote(raw_path),
        raw_path=raw_path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        host=host,
    )


def quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    # Peers vanishing mid-response is the point of this server, not an error.
    if isinstance(context.get("exception"), ConnectionError):
        return
    loop.default_exception_handler(context)


class BodyError(HttpError):
    """The request body's framing is broken: answer, then close the connection."""


class Reject(HttpError):
    """A text error response with extra headers (the request body is drained first)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(status, message)
        self.headers = headers


class BodyStream:
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
                raise HttpError(501, f"unsupported Transfer-Encoding {te!r}")
            self.chunked = True
        elif cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not DIGITS.match(next(iter(values))):
                raise HttpError(400, "bad Content-Length")
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
            raise BodyError(400, "bad chunk header") from None
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BodyError(400, "bad chunk size") from None
        if size < 0:
            raise BodyError(400, "bad chunk size")
        if size == 0:
            try:
                while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
            except (asyncio.LimitOverrunError, ValueError):
                raise BodyError(400, "bad chunked trailer") from None
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
                    raise BodyError(400, "chunk not followed by CRLF")
            else:
                self.done = True
        return data

    async def drain(self) -> None:
        while await self.read():
            pass


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
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


def sf_boolean(value: str | None, header: str) -> bool | None:
    """A structured-field boolean (RFC 8941); None when absent, 400 when malformed."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    if item == "?1":
        return True
    if item == "?0":
        return False
    raise HttpError(400, f"{header} must be ?0 or ?1")


def int_header(headers: Mapping[str, str], name: str, *, required: bool) -> int | None:
    raw = headers.get(name.lower())
    if raw is None:
        if required:
            raise HttpError(400, f"missing {name}")
        return None
    raw = raw.strip()
    if not DIGITS.match(raw):
        raise HttpError(400, f"bad {name}: {raw!r}")
    return int(raw)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    if writer.transport.is_closing():
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, TimeoutError):
        writer.transport.abort()


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next request head; None on EOF, b"" for stray blank lines."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head larger than 64 KiB") from None
    except ValueError:
        # StreamReader raises ValueError when the buffer overran between reads.
        raise HttpError(431, "request head larger than 64 KiB") from None
    return head.lstrip(b"\r\n")


async def read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request
) -> int:
    """Read and discard a request body; its length."""
    te = req.headers.get("transfer-encoding")
    cl = req.headers.get("content-length")
    if te is None and cl is None:
        return 0
    if req.headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if te is not None:
        if te.strip().lower() != "chunked":
            raise HttpError(501, f"unsupported Transfer-Encoding {te!r}")
        return await discard_chunked(reader)
    assert cl is not None
    values = {v.strip() for v in cl.split(",")}
    if len(values) != 1 or not DIGITS.match(next(iter(values))):
        raise HttpError(400, "bad Content-Length")
    remaining = total = int(values.pop())
    while remaining:
        chunk = await reader.read(min(remaining, CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(chunk)
    return total


async def discard_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            raise HttpError(400, "bad chunk header") from None
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return total
        await reader.readexactly(size + 2)
        total += size


async def flush(writer: asyncio.StreamWriter) -> None:
    """Wait until the transport buffer is empty, not just below the high-water mark."""
    transport = writer.transport
    high = transport.get_write_buffer_limits()[1]
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high)


async def wait_delivered(writer: asyncio.StreamWriter) -> None:
    # An RST discards whatever still sits in the kernel send queue, so the
    # "N bytes then reset" contract needs the peer to have acknowledged them.
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None:
        return
    for _ in range(int(DELIVERY_TIMEOUT / 0.002)):
        if unsent_bytes(sock) == 0:
            return
        await asyncio.sleep(0.002)


async def send_simple(
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
    hdrs.append(("Date", http_date()))
    if not keep:
        hdrs.append(("Connection", "close"))
    writer.write(head_bytes(status, hdrs, reason) + (b"" if head_only else body))
    await writer.drain()


async def send_text(
    writer: asyncio.StreamWriter,
    status: int,
    text: str,
    *,
    keep: bool,
    head_only: bool = False,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    hdrs = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
    await send_simple(writer, status, (text + "\n").encode(), hdrs, keep=keep, head_only=head_only)
