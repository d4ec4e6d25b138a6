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

``/r/<name>.sha256``, ``/r/<dir>/SHA256SUMS``, ``/gen/<size>.sha256``
    Checksum files of what those URLs serve now (``<hex>  <file name>`` lines, as
    ``sha256sum`` writes them; SHA256SUMS lists the resources directly in ``<dir>``).
    A resource registered under such a name is served instead.
``/s/r/<name>?<token>``, ``/s/gen/<size>?<token>``, ``/sign?path=...``
    Expiring signed URLs and the endpoint that mints them; see
    :mod:`bgtransfer.testing._signed`.
``/metalink/r/<name>``, ``/metalink/gen/<size>``
    Metalink 4 (RFC 5854) documents listing mirrors with size, sha-256 and piece
    hashes; see :mod:`bgtransfer.testing._metalink`.
``/upload/<name>``, ``/tus/``, ``/ietf/<name>``
    Upload endpoints; see :mod:`bgtransfer.testing._uploads`.

Anything else is 404. ``/r`` and ``/gen`` answer GET and HEAD (405 otherwise).

Malformed request heads get 400, heads over 64 KiB get 431; both then close.

The rest is documented where it is implemented:

- :mod:`bgtransfer.testing._downloads`: correct behaviour of ``/r`` and ``/gen``
  (ranges, If-Range, conditional GET);
- :mod:`bgtransfer.testing._knobs`: the fault knobs (lying mirrors included);
- :mod:`bgtransfer.testing._integrity`: RFC 9530 digests, ``x-goog-hash``,
  ``x-amz-checksum-sha256`` and their knobs;
- :mod:`bgtransfer.testing._uploads`: uploads in general and ``/upload/<name>``;
- :mod:`bgtransfer.testing._tus` and :mod:`bgtransfer.testing._ietf`: resumable uploads;
- :mod:`bgtransfer.testing._http`: request parsing and HTTP/1.1 framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from bgtransfer.testing._bodies import (
    AUTO_ETAGS,
    FIXED_LAST_MODIFIED,
    Resource,
    auto_etag,
    shift_date,
)
from bgtransfer.testing._http import (
    IDLE_TIMEOUT,
    MAX_HEAD,
    HttpError,
    RequestRecord,
    Reset,
    close_writer,
    quiet_exception_handler,
    read_head,
    send_text,
)
from bgtransfer.testing._knobs import UploadFaults
from bgtransfer.testing._routes import Router
from bgtransfer.testing._state import IetfUpload, State, TusUpload

__all__ = ["FIXED_LAST_MODIFIED", "FaultServer", "IetfUpload", "RequestRecord", "TusUpload"]

logger = logging.getLogger("bgtransfer.testing")


@dataclass(eq=False)  # identity hashing: connections live in a set
class _Conn:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    ident: int


class FaultServer:
    """Fault-injecting HTTP/1.1 server running on its own loop in a daemon thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, other_host: bool = False) -> None:
        self.host = host
        self._requested_port = port
        self._other_host = other_host
        self._port: int | None = None
        self._other_port: int | None = None
        # Shared with the handlers; the public attributes below are the same objects.
        self._state = State()
        self.log = self._state.log
        self.uploads = self._state.uploads
        self.upload_fields = self._state.upload_fields
        self.tus_uploads = self._state.tus_uploads
        self.ietf_uploads = self._state.ietf_uploads
        self._router = Router(self._state, self._base_for, lambda: self.other_base_url)
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
        resolved = auto_etag(data) if etag in AUTO_ETAGS else etag
        with self._state.lock:
            self._state.resources[name] = Resource(bytes(data), resolved, last_modified)
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
        with self._state.lock:
            old = self._state.resources.get(name)
            if old is None:
                raise KeyError(f"no resource named {name!r}; use add() first")
            resolved = auto_etag(data) if etag in AUTO_ETAGS else etag
            if last_modified == "auto":
                last_modified = shift_date(old.last_modified, dt.timedelta(hours=1))
            self._state.resources[name] = Resource(bytes(data), resolved, last_modified)

    def other_host_lies(self, mode: str | None = "etag") -> None:
        """Make the other origin (``other_host=True``) a lying mirror: every ``/r`` and
        ``/gen`` answer it gives is as with ``lie=<mode>`` (``"1"``: other bytes and ETag;
        ``"etag"``: other bytes, true validators), so the very same path and query serve
        different bytes of the same length on the two origins. ``None`` stops it."""
        if mode not in (None, "1", "etag"):
            raise ValueError('mode must be "1", "etag" or None')
        with self._state.lock:
            if mode is None:
                self._state.host_lies.pop("127.0.0.2", None)
            else:
                self._state.host_lies["127.0.0.2"] = mode

    def sign_url(
        self,
        path: str,
        *,
        expires_in: float = 300.0,
        max_bytes: int | None = None,
        style: str = "amz",
    ) -> str:
        """A signed URL serving ``path`` (``/r/<name>`` or ``/gen/<size>``, knobs allowed)
        until ``expires_in`` seconds from now (negative: already expired) and, with
        ``max_bytes``, for that many body bytes; ``style`` is ``"amz"`` or ``"token"``.
        See :mod:`bgtransfer.testing._signed`."""
        return self._router.signer.mint(
            self.base_url, path, expires_in=expires_in, max_bytes=max_bytes, style=style
        )[0]

    def signed_served(self, url: str) -> int:
        """Body bytes served so far under the token of a URL from :meth:`sign_url` (counted
        only for tokens with ``max_bytes``; KeyError for an unknown token)."""
        with self._state.lock:
            return self._router.signer.served(url)

    # ------------------------------------------------------------------ log and counters

    def requests(self, path_prefix: str = "") -> list[RequestRecord]:
        """Copy of the log, restricted to requests whose decoded path starts with the prefix."""
        with self._state.lock:
            return [r for r in self.log if r.path.startswith(path_prefix)]

    def clear_log(self) -> None:
        with self._state.lock:
            self.log.clear()

    def peak_concurrency(self, *, reset: bool = False) -> int:
        """The most ``/r`` and ``/gen`` responses this server was sending at one time (since
        the start or the last reset): how many connections a client really used at once.

        A response whose client has closed the connection is not counted, though its
        handler may not have noticed yet (a rate-limited body notices at its next write).
        """
        with self._state.lock:
            peak = self._state.peak_serving
            if reset:
                self._state.peak_serving = 0
            return peak

    def reset_counters(self) -> None:
        """Forget how often each fault key was hit (``times``) and the /gen versions."""
        with self._state.lock:
            self._state.counters.clear()
            self._state.gen_versions.clear()

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
        with self._state.lock:
            return self._state.received.get(name, 0)

    def tus_data(self, name: str) -> bytes:
        """Bytes of the latest tus upload with this id or name (KeyError if none / forgotten)."""
        with self._state.lock:
            up = self._state.find_tus(name)
            if up is None:
                raise KeyError(f"no tus upload {name!r}")
            return bytes(up.data)

    def ietf_data(self, name: str) -> bytes:
        """Bytes of the latest IETF upload with this id or target name (KeyError if none)."""
        with self._state.lock:
            up = self._state.find_ietf(name)
            if up is None:
                raise KeyError(f"no IETF upload {name!r}")
            return bytes(up.data)

    def upload_complete(self, name: str) -> bool:
        """Whether a plain/multipart upload of this name finished, or the latest tus/IETF
        upload with this id or name has all its bytes."""
        with self._state.lock:
            if name in self._state.plain_done:
                return True
            tus = self._state.find_tus(name)
            if tus is not None and tus.complete:
                return True
            ietf = self._state.find_ietf(name)
            return ietf is not None and ietf.complete

    def forget_upload(self, name: str) -> None:
        """Lose every upload with this id or name: tus/IETF HEAD and PATCH then get 404,
        and stored plain/multipart results disappear. ``upload_received`` is kept."""
        with self._state.lock:
            self._state.forget_locked(name)

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
        faults = UploadFaults(cut_after, conflict_once, lose_once, status_once, retry_after)
        with self._state.lock:
            if faults.empty():
                self._state.upload_faults.pop(name_or_id, None)
            else:
                self._state.upload_faults[name_or_id] = faults

    def clear_uploads(self) -> None:
        """Forget all uploads, received-byte counts and armed upload faults."""
        with self._state.lock:
            self._state.uploads.clear()
            self._state.upload_fields.clear()
            self._state.tus_uploads.clear()
            self._state.ietf_uploads.clear()
            self._state.received.clear()
            self._state.plain_done.clear()
            self._state.tus_names.clear()
            self._state.ietf_names.clear()
            self._state.id_names.clear()
            self._state.upload_faults.clear()

    # Callers of the *_locked / _find_* helpers hold self._state.lock.

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
        loop.set_exception_handler(quiet_exception_handler)
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
                    head = await asyncio.wait_for(read_head(reader), IDLE_TIMEOUT)
                except HttpError as err:
                    await send_text(writer, err.status, err.message, keep=False)
                    break
                if head is None:
                    break
                if not head:
                    continue
                if not await self._router.serve_one(reader, writer, head, host, conn.ident):
                    break
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, Reset):
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
            await close_writer(writer)

    def _base_for(self, host: str) -> str:
        if self._other_port is not None and host == "127.0.0.2" and self.host != "127.0.0.2":
            return f"http://127.0.0.2:{self._other_port}"
        return self.base_url
