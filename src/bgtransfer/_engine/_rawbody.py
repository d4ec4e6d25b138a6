"""The fast path for a big body: read it into one reused buffer, past aiohttp's stream.

aiohttp hands every piece of a body through its parser into a stream of fresh ``bytes``
objects (~256 KiB reads, each a loop round and a copy). For a long identity-encoded body
with a Content-Length there is nothing left to parse: once the headers are in, the rest is
raw bytes. This takes the connection over (aiohttp's reading paused, its read timer
dropped), drains what aiohttp already buffered, and then ``recv_into`` a 1 MiB
``bytearray`` that is written to the file as a memoryview: on this machine that is the
difference between ~0.7 and ~1.3 GB/s (research/perf.md: ``recv_into(1M)`` 2.1 GB/s to a
file). The connection is closed afterwards, never returned to aiohttp's pool.

Over TLS (``take_over(resp, tls=True)``) the socket carries records, not the body. asyncio's
SSL protocol decrypts them with an ``ssl.SSLObject`` over memory BIOs and, for a protocol that
is not buffered like aiohttp's, allocates a ``bytes`` per 16 KiB record, joins them, and feeds
the parser, which copies again into its stream. :class:`TLSReader` keeps using *that same*
``SSLObject`` (the handshake, the verified chain and hostname, the keys: nothing about the
session changes) but feeds its incoming BIO from a dup of the socket itself and decrypts
straight into the caller's buffer with ``SSLObject.read(n, buffer)``. It is a socket
subclass, so the caller's ``loop.sock_recv_into(raw.sock, buf)`` reads plaintext
unchanged. It relies on private attributes of CPython's ``asyncio.sslproto.SSLProtocol``
(the 3.11+ design: ``_sslobj``, ``_incoming``, ``_transport``, ``_incoming_low_water``,
``_state``); when they are missing or look different it returns None and aiohttp's path is
used.

Both bodies are read with ``await RawBody.read(limit)``. A :class:`TLSBody` may instead
decrypt in a thread of its own (:mod:`bgtransfer._engine._pump`, :meth:`TLSReader.fill`)
so that decryption overlaps the loop's file writes and syncs; :func:`decrypt_in_thread`
decides, as only a machine with a core to spare gains from it. The session is then the
thread's: the take-over unwraps asyncio's protocol, so closing the response on the loop
(the watchdog, a stop) cannot start a TLS shutdown inside it.

Chunked bodies, unknown lengths and short bodies keep aiohttp's path.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import time
from asyncio.sslproto import SSLProtocolState
from collections.abc import Callable
from typing import Any, cast

import aiohttp

from bgtransfer._engine._pump import Pump

__all__ = [
    "MIN_RAW_BYTES",
    "PUMP_DEPTH",
    "THREAD_ENV",
    "RawBody",
    "TLSBody",
    "TLSReader",
    "decrypt_in_thread",
    "take_over",
]

# Below this, closing the keep-alive connection costs more than the copies save.
MIN_RAW_BYTES = 8 << 20

# Ciphertext read per recv from the kernel, copied into the BIO: 16 records per call. 1 MiB
# cost more CPU (benchmarks/tls_body.py, 512 MiB: 0.68 s against 0.60 s), likely because a
# 256 KiB buffer stays in cache between the recv, the BIO copy and the decrypt.
_NET_READ = 256 << 10

_SSL_EOF = (ssl.SSLEOFError, ssl.SSLZeroReturnError)

# Set to 1 to decrypt TLS bodies in a thread of their own (see decrypt_in_thread).
THREAD_ENV = "BGTRANSFER_TLS_THREAD"
# Buffers of a TLS body's pump (_pump.py): one the loop writes, the others the thread fills.
PUMP_DEPTH = 3
# How long a partly filled buffer waits for more before the loop gets it: a slow stream is
# still heard of (progress, the idle timeout, the low-speed watchdog) many times a second.
_GATHER = 0.05
# A blocked wait for data looks at the halt flag this often (a halt also wakes it at once).
_POLL_STEP = 0.5


class TLSReader(socket.socket):
    """A dup of a TLS connection's socket whose ``recv_into`` yields the plaintext.

    ``recv_into`` decrypts what the session already holds first (OpenSSL's pending record,
    ciphertext left in the incoming BIO), then reads ciphertext from the socket until the
    buffer is full or the socket has nothing more right now; it raises BlockingIOError when
    nothing at all is there, as a non-blocking socket does, and returns 0 at the end of the
    stream (close_notify or a cut connection: the caller decides whether that was early).
    A record that fails authentication raises ``ssl.SSLError`` (an OSError). A socket
    subclass, not an ``ssl.SSLSocket``, so ``loop.sock_recv_into`` takes it as it is.
    """

    def __init__(
        self, fd: int, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, abort: Callable[[], None]
    ) -> None:
        super().__init__(fileno=fd)
        self.setblocking(False)
        # With a buffer, SSLObject.read returns the count, not bytes (typeshed has only the
        # bytes form).
        self._read_into = cast(Callable[[int, memoryview], int], sslobj.read)
        self._incoming = incoming
        self._abort = abort
        self._net = memoryview(bytearray(_NET_READ))
        self._eof = False
        self._halted = False
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def _feed(self) -> bool:
        """Move ciphertext from the socket into the BIO; False when the socket has none now."""
        try:
            n = super().recv_into(self._net)
        except (BlockingIOError, InterruptedError):
            return False
        if n == 0:
            self._incoming.write_eof()  # the next read ends in SSLEOFError or close_notify
        else:
            self._incoming.write(self._net[:n])
        return True

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if flags:
            raise ValueError("flags are not supported on a TLS body")
        view = memoryview(buffer)
        want = nbytes or len(view)
        if want > len(view):
            raise ValueError("buffer too small for requested bytes")  # as socket.recv_into
        got = 0
        while got < want and not self._eof:
            try:
                n = self._read_into(want - got, view[got:want])
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    # Not expected once the BIO has its EOF (OpenSSL then reports one), but
                    # a socket at EOF is always readable: never answer "try again" there.
                    self._eof = True
                    break
                if not self._feed():
                    break
                continue
            except _SSL_EOF:
                n = 0
            if n == 0:
                self._eof = True
                break
            got += n
        if got == 0 and not self._eof:
            raise BlockingIOError
        return got

    def fill(self, view: memoryview) -> int:
        """The blocking read of a :class:`~bgtransfer._engine._pump.Pump`'s thread: decrypt
        into ``view`` until it is full, the stream ends, or the socket has been quiet for
        ``_GATHER`` s with something in hand; 0 only at the end of the stream (or halted).
        Only this thread touches the session meanwhile (see :class:`TLSBody`)."""
        want = len(view)
        got = 0
        quiet_since = 0.0
        while got < want and not self._eof:
            try:
                n = self._read_into(want - got, view[got:])
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    self._eof = True  # as in recv_into
                    break
                if self._feed():
                    continue
                if self._halted:
                    break
                if not got:
                    self._poller.poll(_POLL_STEP * 1000)  # the loop's idle timeout rules
                    continue
                now = time.monotonic()
                quiet_since = quiet_since or now
                wait = quiet_since + _GATHER - now
                if wait <= 0 or not self._poller.poll(wait * 1000):
                    break
                continue
            except _SSL_EOF:
                n = 0
            if n == 0:
                self._eof = True
                break
            got += n
        return got

    def halt(self) -> None:
        """Wake a blocked :meth:`fill` and make it end (from the loop): the connection goes."""
        self._halted = True
        try:
            self.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buf = bytearray(bufsize)
        return bytes(buf[: self.recv_into(buf, bufsize, flags)])

    def close(self) -> None:
        super().close()
        # The session's state is ours now: no close_notify exchange through asyncio's
        # protocol (it would wait on a socket nobody reads); the connection just goes.
        self._abort()


class RawBody:
    """The rest of one response body, straight from the socket (or its TLS session)."""

    def __init__(self, sock: socket.socket, buffered: bytes, remaining: int) -> None:
        self.sock = sock
        self.buffered = buffered  # what aiohttp had read already: comes first
        self.remaining = remaining  # bytes still to read from the socket
        self._buf: memoryview | None = None

    async def read(self, limit: int) -> memoryview:
        """The next bytes of the body, at most ``limit``; empty at the end of the stream.
        The chunk is valid until the next ``read`` (one reused buffer)."""
        if self._buf is None or len(self._buf) < limit:
            self._buf = memoryview(bytearray(limit))
        n = await asyncio.get_running_loop().sock_recv_into(self.sock, self._buf[:limit])
        return self._buf[:n]

    def close(self) -> None:
        self.sock.close()

    def cut(self) -> None:
        """End the transfer from outside (the low-speed watchdog): the read sees EOF."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TLSBody(RawBody):
    """A taken-over TLS body whose :meth:`read` decrypts in a thread of its own (a
    :class:`~bgtransfer._engine._pump.Pump` over :meth:`TLSReader.fill`), so decryption
    overlaps the loop's file writes and checkpoints.

    From the first ``read`` on, the TLS session belongs to that thread: asyncio's SSL protocol
    was put out of play by :func:`take_over` (nothing on the loop reads, writes or shuts the
    session down, whatever closes the response meanwhile), and :meth:`close` releases the
    descriptor and aborts the connection only once the thread has stopped.
    """

    sock: TLSReader

    def __init__(self, sock: TLSReader, buffered: bytes, remaining: int) -> None:
        super().__init__(sock, buffered, remaining)
        self.threaded = decrypt_in_thread()
        self.pump: Pump | None = None  # from the first read on

    async def read(self, limit: int) -> memoryview:
        if not self.threaded:
            return await super().read(limit)  # the loop decrypts, through TLSReader.recv_into
        if self.pump is None:
            self.pump = Pump(
                self.sock, self.remaining, size=limit, depth=PUMP_DEPTH, on_stopped=self.sock.close
            )
        return await self.pump.read(limit)

    def close(self) -> None:
        if self.pump is None:
            self.sock.close()
        else:
            self.pump.close()  # closes the reader once its thread has stopped


def decrypt_in_thread() -> bool:
    """Whether a TLS body is decrypted in a thread of its own: only when
    ``BGTRANSFER_TLS_THREAD=1`` asks for it. The thread overlaps decryption with the file's
    writes and syncs, which needs a core to spare: on the 2-core VM of the benchmarks it
    cost 5-20 % more CPU for no faster transfer (benchmarks/README.md, "Issue 19, session
    6: where the HTTPS time goes"), and its gain on more cores is not measured yet, so it
    is opt-in until it is."""
    return os.environ.get(THREAD_ENV, "") == "1"


def _tls_parts(
    transport: asyncio.BaseTransport, sslobj: object
) -> tuple[Any, ssl.MemoryBIO, asyncio.Transport] | None:
    """The SSL protocol, its incoming BIO and the socket transport under an asyncio SSL
    transport, if this Python's sslproto has the shape this module was written against."""
    proto = getattr(transport, "_ssl_protocol", None)
    incoming = getattr(proto, "_incoming", None)
    inner = getattr(proto, "_transport", None)
    if (
        not isinstance(sslobj, ssl.SSLObject)
        or getattr(proto, "_sslobj", None) is not sslobj
        or not isinstance(incoming, ssl.MemoryBIO)
        or not isinstance(inner, asyncio.Transport)
        or getattr(proto, "_state", None) is not SSLProtocolState.WRAPPED
        or not isinstance(getattr(proto, "_incoming_low_water", None), int)
    ):
        return None
    return proto, incoming, inner


def take_over(resp: aiohttp.ClientResponse, *, tls: bool = False) -> RawBody | None:
    """Take ``resp``'s body off aiohttp before anything read from it, or None when this path
    does not apply (then aiohttp's stream is untouched). ``tls``: also over HTTPS, where
    ``RawBody.sock`` is a :class:`TLSReader`."""
    conn = resp.connection
    if conn is None or conn.protocol is None or conn.transport is None:
        return None
    transport = conn.transport
    sslobj = transport.get_extra_info("ssl_object")
    parts = None
    if sslobj is not None:
        parts = _tls_parts(transport, sslobj) if tls else None
        if parts is None:
            return None
    sock = transport.get_extra_info("socket")
    headers = resp.headers
    if sock is None or "Transfer-Encoding" in headers:
        return None
    try:
        length = int(headers.get("Content-Length", ""))
    except ValueError:
        return None
    content = resp.content
    if content.exception() is not None or content.is_eof():
        return None
    # Everything the parser produced so far went into the stream (total_bytes) and is still
    # in its buffer (nothing read it yet); the rest of the body is in the socket (or, over
    # TLS, in the session's BIO and the socket). No await from here on, so nothing arrives
    # in between.
    remaining = length - content.total_bytes
    if remaining < MIN_RAW_BYTES:
        return None  # not worth closing the connection for
    buffered = content.read_nowait()  # the caller has read nothing of the body yet
    conn.protocol.pause_reading()  # also stops aiohttp's sock_read timer
    if parts is None:
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        raw.setblocking(False)
        return RawBody(raw, buffered, remaining)
    proto, incoming, inner = parts
    # The socket transport under the SSL protocol must not read on: its bytes would land in
    # the BIO behind ours, out of order. The protocol resumes it when the BIO drains below
    # its low-water mark, so that mark goes below zero: never again for this connection.
    inner.pause_reading()
    proto._incoming_low_water = -1
    # And the protocol must not touch the session again: closing the response (the
    # watchdog, a stop) would otherwise start a TLS shutdown (SSLObject.unwrap) on the loop
    # while the body's thread decrypts with the same session. Unwrapped, every read, write
    # and shutdown path of the protocol is a no-op; the reader's close aborts the socket
    # transport itself.
    proto._state = SSLProtocolState.UNWRAPPED
    assert isinstance(sslobj, ssl.SSLObject)
    reader = TLSReader(os.dup(sock.fileno()), sslobj, incoming, inner.abort)
    return TLSBody(reader, buffered, remaining)
