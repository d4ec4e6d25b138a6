"""The client side of the control protocol: talks to (and starts) a home's daemon."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlencode

import h11

from bgtransfer._daemon._lock import lock_holder, process_stopped, stopped_pid
from bgtransfer._daemon._paths import daemon_log, socket_path
from bgtransfer._exceptions import (
    DaemonStopped,
    DaemonUnavailable,
    InvalidRequest,
    TransferError,
    error_from_dict,
)
from bgtransfer._trust import check_peer, open_private

# DaemonUnavailable lives in _exceptions; it is re-exported here for older imports.
__all__ = ["DaemonClient", "DaemonUnavailable", "spawn_daemon"]

START_TIMEOUT = 20.0
# A kept connection idle longer than this is dropped rather than reused: the daemon closes
# idle connections after its header timeout (10 s by default), and a request must not race
# that close. A few seconds covers the loop a user writes (one call after another).
IDLE_MAX = 2.0
# Idle connections kept per client: one per thread that calls at once is plenty.
POOL_MAX = 8
# While an answer is awaited, how often to look whether the daemon is stopped (SIGSTOP).
CHECK_EVERY = 1.0
STOPPED_MESSAGE = "the daemon was stopped"


def spawn_daemon(home: str) -> subprocess.Popen[bytes]:
    """Start ``bgtransfer daemon run`` fully detached: own session, stdio to the log."""
    log_path = daemon_log(home)
    try:
        fd = open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as exc:  # UnsafeHome (a planted link) is not an OSError: it propagates
        raise DaemonUnavailable(
            f"cannot start the daemon: cannot write its log {log_path}: {exc.strerror}"
        ) from None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgtransfer", "--home", home, "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    except OSError as exc:
        raise DaemonUnavailable(f"cannot start the daemon ({sys.executable}): {exc}") from None
    finally:
        os.close(fd)
    # Reap it if it exits while we live; after we exit, init adopts it.
    threading.Thread(target=proc.wait, daemon=True, name="bgtransfer-reaper").start()
    return proc


def last_log_line(home: str) -> str:
    """The daemon log's last non-empty line (a daemon that cannot start ends with why)."""
    try:
        fd = open_private(daemon_log(home), os.O_RDONLY)
    except (OSError, TransferError):
        return ""
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 4096, max(0, size - 4096))
    finally:
        os.close(fd)
    lines = [ln for ln in tail.decode(errors="replace").splitlines() if ln.strip()]
    # The daemon's own last words (see _server.main) are quoted without their prefix.
    return lines[-1].strip().removeprefix("bgtransfer: daemon failed: ") if lines else ""


def _request(method: str, path: str, body: Any, params: dict[str, str] | None) -> bytes:
    """One keep-alive request, framed by hand: h11 checks the answer, and a request this
    simple (ASCII target, JSON body with its length) needs no state machine to write."""
    target = path + ("?" + urlencode(params) if params else "")
    if not (target.isascii() and target.isprintable()) or " " in target:
        return _h11_request(method, target, body)  # h11 refuses it as it always did
    if body is None:
        return f"{method} {target} HTTP/1.1\r\nHost: bgtransfer\r\n\r\n".encode()
    payload = json.dumps(body).encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: bgtransfer\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _h11_request(method: str, target: str, body: Any) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "bgtransfer")]
    payload = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    if payload:
        out += conn.send(h11.Data(data=payload)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


_END = h11.EndOfMessage()
_STAND_INS: dict[str, h11.Request] = {}


def _stand_in(method: str) -> h11.Request:
    """The request h11 is told of, one per method: h11's events are immutable, and
    building one validates its headers again (a plain loop's submits pay that each)."""
    req = _STAND_INS.get(method)
    if req is None:
        req = _STAND_INS[method] = h11.Request(
            method=method, target="/", headers=[("Host", "bgtransfer")]
        )
    return req


def _not_answering(home: str, pid: int) -> DaemonUnavailable:
    hint = (
        f"it is: resume it with kill -CONT {pid}"
        if process_stopped(pid)
        else f"see {daemon_log(home)}"
    )
    return DaemonUnavailable(
        f"daemon pid {pid} holds the lock of {home} but does not answer: stopped? ({hint})"
    )


@dataclasses.dataclass(eq=False)
class _Kept:
    """A connection to the daemon that may carry more than one request."""

    sock: socket.socket
    pid: int
    idle_since: float = 0.0
    # A forked child must not talk on its parent's connection (their bytes would mix).
    owner: int = dataclasses.field(default_factory=os.getpid)


def _close_all(pool: list[_Kept]) -> None:
    while pool:
        pool.pop().sock.close()


@dataclasses.dataclass
class _Followed:
    """The daemon an event stream followed (across its reconnects)."""

    pid: int | None = None


class DaemonClient:
    """HTTP/1.1 over the daemon's Unix socket (h11 does the framing). Not aiohttp: a client
    command then starts in ~0.1 s instead of ~0.25 s.

    ``keep_alive=False`` (the CLI): one connection per call. ``keep_alive=True`` (a
    Session): consecutive calls reuse idle connections (a connect, its peer check and the
    daemon's accept cost about as much CPU as the call itself); a kept connection the daemon
    closed meanwhile (restart, idle timeout) is replaced by a fresh one and the request sent
    again, which every call allows (see :meth:`call`). Event streams always have their own.

    Before a byte is sent, the peer's credentials are checked: a socket served by another
    user gets nothing (:class:`UnsafeHome`). ``peer_pid`` is the pid of the daemon that
    answered last; a caller that follows a task passes it back as ``followed`` so that a
    daemon stopped on request is not started again behind the user's back.
    """

    def __init__(self, home: str, *, keep_alive: bool = False) -> None:
        self.home = home
        self.socket = socket_path(home)
        self.peer_pid: int | None = None
        self.keep_alive = keep_alive
        # Plain non-blocking sockets driven by loop.sock_*: usable from any event loop, and
        # closed without a loop (the finalizer closes what a client never closed).
        self._pool: list[_Kept] = []
        self._closer = weakref.finalize(self, _close_all, self._pool)

    async def close(self) -> None:
        """Close the kept connections (a later call opens new ones)."""
        _close_all(self._pool)

    async def _connect(self) -> _Kept:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.socket)
            pid = check_peer(sock, self.socket)
        except BaseException:
            sock.close()
            raise
        return _Kept(sock, pid)

    def _take(self) -> _Kept | None:
        """An idle kept connection young enough to reuse, if any."""
        now = time.monotonic()
        while self._pool:
            kept = self._pool.pop()
            if now - kept.idle_since < IDLE_MAX and kept.owner == os.getpid():
                return kept
            kept.sock.close()
        return None

    def _give_back(self, kept: _Kept) -> None:
        if len(self._pool) >= POOL_MAX:
            kept.sock.close()
            return
        kept.idle_since = time.monotonic()
        self._pool.append(kept)

    async def _exchange(
        self, kept: _Kept, method: str, request: bytes, read_timeout: float | None = None
    ) -> tuple[int, bytes, bool]:
        """Send one request on ``kept``; (status, body, whether the connection may carry
        another). Nothing received before the connection closed: ConnectionResetError."""
        loop = asyncio.get_running_loop()
        self.peer_pid = kept.pid
        await loop.sock_sendall(kept.sock, request)
        # h11 reads the answer; it is told of the request (already framed) by a stand-in.
        conn = h11.Connection(h11.CLIENT)
        conn.send(_stand_in(method))
        conn.send(_END)
        status, chunks, got_any = 0, [], False
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionError(f"bad answer from the daemon: {exc}") from exc
            if ev is h11.NEED_DATA:
                data = await self._recv(kept, read_timeout)
                if not data and not got_any:
                    raise ConnectionResetError("the daemon closed the kept connection")
                got_any = True
                conn.receive_data(data)
            elif isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                reusable = conn.their_state is h11.DONE and conn.trailing_data == (b"", False)
                return status, b"".join(chunks), reusable
            elif isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("the daemon closed the connection")

    async def _recv(self, kept: _Kept, read_timeout: float | None) -> bytes:
        """The next bytes; a daemon found stopped (SIGSTOP) ends the wait within a second."""
        loop = asyncio.get_running_loop()
        deadline = None if read_timeout is None else loop.time() + read_timeout
        while True:
            step = CHECK_EVERY if deadline is None else min(CHECK_EVERY, deadline - loop.time())
            try:
                async with asyncio.timeout(max(0.0, step)):
                    return await loop.sock_recv(kept.sock, 1 << 16)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise
                if kept.pid and process_stopped(kept.pid):
                    raise _not_answering(self.home, kept.pid) from None

    async def _kept_once(self, method: str, request: bytes) -> tuple[int, bytes]:
        """One request on a kept connection (a fresh one if the kept one was closed)."""
        kept = self._take()
        if kept is not None:
            try:
                status, body, reusable = await self._exchange(kept, method, request)
            except (ConnectionResetError, BrokenPipeError):
                # Closed by the daemon before it answered (restart, idle timeout): try once
                # more on a new connection, so a stale one never looks like a dead daemon.
                kept.sock.close()
            except BaseException:
                kept.sock.close()
                raise
            else:
                self._keep_or_close(kept, reusable)
                return status, body
        kept = await self._connect()
        try:
            status, body, reusable = await self._exchange(kept, method, request)
        except BaseException:
            kept.sock.close()
            raise
        self._keep_or_close(kept, reusable)
        return status, body

    def _keep_or_close(self, kept: _Kept, reusable: bool) -> None:
        if reusable:
            self._give_back(kept)
        else:
            kept.sock.close()

    async def _open(
        self, method: str, path: str, body: Any, params: dict[str, str] | None
    ) -> tuple[h11.Connection, asyncio.StreamReader, asyncio.StreamWriter]:
        target = path + ("?" + urlencode(params) if params else "")
        payload = b"" if body is None else json.dumps(body).encode()
        reader, writer = await asyncio.open_unix_connection(self.socket)
        try:
            self.peer_pid = check_peer(writer.get_extra_info("socket"), self.socket)
        except BaseException:
            writer.close()
            raise
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "bgtransfer"), ("Connection", "close")]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if payload:
            out += conn.send(h11.Data(data=payload)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()
        return conn, reader, writer

    async def _read(self, reader: asyncio.StreamReader, read_timeout: float | None) -> bytes:
        """The next bytes; a daemon found stopped (SIGSTOP) ends the wait within a second."""
        loop = asyncio.get_running_loop()
        deadline = None if read_timeout is None else loop.time() + read_timeout
        while True:
            step = CHECK_EVERY if deadline is None else min(CHECK_EVERY, deadline - loop.time())
            try:
                async with asyncio.timeout(max(0.0, step)):
                    return await reader.read(1 << 16)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise
                if self.peer_pid and process_stopped(self.peer_pid):
                    raise _not_answering(self.home, self.peer_pid) from None

    async def _next(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        read_timeout: float | None = None,
    ) -> Any:
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionError(f"bad answer from the daemon: {exc}") from exc
            if ev is not h11.NEED_DATA:
                if isinstance(ev, h11.ConnectionClosed):
                    raise ConnectionError("the daemon closed the connection")
                return ev
            conn.receive_data(await self._read(reader, read_timeout))  # b"": end of stream

    async def _once(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Any:
        async with asyncio.timeout(timeout):
            if self.keep_alive:
                status, raw = await self._kept_once(method, _request(method, path, body, params))
            else:
                status, raw = await self._closed_once(method, path, body, params)
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            raise ConnectionError(f"the daemon's answer is not JSON (HTTP {status})") from exc
        if status >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            if status == 413:  # the caller's fault, not the daemon's: never "unavailable"
                message = str(err.get("message", ""))
                if not message.startswith("request too large"):
                    message = f"request too large ({message or 'HTTP 413'})"
                raise InvalidRequest(message)
            raise error_from_dict(
                {"code": err.get("code"), "message": err.get("message", f"HTTP {status}")}
            )
        return data

    async def _closed_once(
        self, method: str, path: str, body: Any, params: dict[str, str] | None
    ) -> tuple[int, bytes]:
        conn, reader, writer = await self._open(method, path, body, params)
        try:
            status, chunks = 0, []
            while True:
                ev = await self._next(conn, reader)
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    chunks.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    return status, b"".join(chunks)
        finally:
            writer.close()

    async def _probe(self) -> dict[str, Any] | BaseException:
        """The daemon's status, or why there is none."""
        try:
            data = await self._once("GET", "/v1/status", timeout=5)
        except (OSError, DaemonStopped) as exc:
            return exc
        return data if isinstance(data, dict) else ConnectionError("bad status answer")

    async def ping(self) -> dict[str, Any] | None:
        status = await self._probe()
        return None if isinstance(status, BaseException) else status

    async def ensure_running(self) -> dict[str, Any]:
        """The daemon's status, starting it if no daemon holds the home's lock.

        Never a second daemon while the lock is held: a holder that is stopped or does not
        answer is reported at once; one that is starting or stopping is waited for. A child
        that exits without serving is reported with the last line of the log.
        """
        status = await self._probe()
        if not isinstance(status, BaseException):
            return status
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        proc: subprocess.Popen[bytes] | None = None
        spawned = 0
        while True:
            holder = lock_holder(self.home)
            if holder is None:
                if proc is not None and proc.returncode not in (None, 0):
                    line = last_log_line(self.home)
                    raise DaemonUnavailable(
                        f"the daemon could not start: {line or f'exit status {proc.returncode}'}"
                        f" (see {daemon_log(self.home)})"
                    )
                if (proc is None or proc.returncode == 0) and spawned < 3:
                    # returncode 0: it found another daemon holding the lock, since gone.
                    proc = spawn_daemon(self.home)
                    spawned += 1
            elif holder and process_stopped(holder):
                raise _not_answering(self.home, holder)
            elif holder and isinstance(status, TimeoutError):
                raise _not_answering(self.home, holder)  # it accepted, but did not answer
            if loop.time() >= deadline:
                if holder:
                    raise _not_answering(self.home, holder)
                raise DaemonUnavailable(
                    f"the bgtransfer daemon for {self.home} did not start within "
                    f"{START_TIMEOUT:.0f} s; see {daemon_log(self.home)}"
                )
            await asyncio.sleep(0.05)
            status = await self._probe()
            if not isinstance(status, BaseException):
                return status

    def _stopped_on_request(self, followed: int | None) -> bool:
        return followed is not None and stopped_pid(self.home) == followed

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
        start: bool = True,
        waiter: bool = False,
        followed: int | None = None,
    ) -> Any:
        """One control call; if the daemon is gone it is started again and the call retried.

        Every call is safe to repeat: submits carry an idempotency key. ``waiter``: the call
        waits on the daemon (a long poll), and a stop of the daemon ends it with
        :class:`DaemonStopped`. ``followed``: the pid of the daemon this caller followed; if
        that daemon was stopped on request, :class:`DaemonStopped` instead of a new daemon.
        """
        for attempt in range(3):
            try:
                return await self._once(method, path, body=body, params=params, timeout=timeout)
            except DaemonStopped:
                # Answered while the daemon stops: one that waited on it ends; a new call
                # waits for the stop to finish and starts the daemon again.
                if waiter or self._stopped_on_request(followed):
                    raise
                if not start:
                    raise DaemonUnavailable("the bgtransfer daemon is stopping") from None
                if attempt == 2:
                    raise DaemonUnavailable("the bgtransfer daemon keeps stopping") from None
                await self.ensure_running()
            except OSError as exc:  # refused, no socket, reset, closed early, timed out
                if self._stopped_on_request(followed):
                    raise DaemonStopped(STOPPED_MESSAGE) from None
                if not start:
                    raise DaemonUnavailable(
                        f"the bgtransfer daemon is not running ({exc})"
                    ) from exc
                if attempt == 2:
                    raise DaemonUnavailable(f"the bgtransfer daemon keeps failing: {exc}") from exc
                await self.ensure_running()
        raise AssertionError("unreachable")  # pragma: no cover

    async def events(
        self,
        session: str,
        since: int | None,
        *,
        kinds: str | None = None,
        completions: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Replay then follow the session's events, reconnecting (and restarting the daemon).

        Yields the daemon's lines, ``replay_end`` markers included. A reconnect resumes after
        the last cursor seen (the replay's end counts), so acknowledged completions are not
        heard again; ``completions`` streams ask for the unacknowledged ones afresh instead.
        A stop of the daemon on request ends the stream with DaemonStopped.
        """
        cursor = since
        stream = _Followed()
        while True:
            params = {"session": session}
            if cursor is not None and not completions:
                params["since"] = str(cursor)
            if kinds is not None:
                params["kinds"] = kinds
            if completions:
                params["completions"] = "1"
            try:
                async with contextlib.aclosing(self._event_lines(params, stream)) as lines:
                    async for item in lines:
                        if item.get("cursor") is not None:
                            cursor = int(item["cursor"])
                        yield item
            except (OSError, TimeoutError):
                if self._stopped_on_request(stream.pid):
                    raise DaemonStopped(STOPPED_MESSAGE) from None
                await asyncio.sleep(0.2)
                await self.ensure_running()

    async def _event_lines(
        self, params: dict[str, str], stream: _Followed
    ) -> AsyncGenerator[dict[str, Any]]:
        """One connection's events; ends with ConnectionError (reconnect) or the daemon's
        error. ``stream.pid``: the daemon that accepted the stream."""
        writer: asyncio.StreamWriter | None = None
        try:
            conn, reader, writer = await self._open("GET", "/v1/events", None, params)
            status, pending, failed = 0, b"", b""
            while True:
                ev = await self._next(conn, reader, read_timeout=60)
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                    if status < 400:
                        stream.pid = self.peer_pid
                elif isinstance(ev, h11.Data) and status >= 400:
                    failed += bytes(ev.data)
                elif isinstance(ev, h11.Data):
                    pending += bytes(ev.data)
                    *lines, pending = pending.split(b"\n")
                    for line in filter(bytes.strip, lines):
                        item = json.loads(line)
                        if "task_id" not in item and isinstance(item.get("error"), dict):
                            raise error_from_dict(item["error"])  # the daemon stopped
                        yield item
                elif isinstance(ev, h11.EndOfMessage):
                    if status >= 400:
                        err = error_from_dict(json.loads(failed or b"{}").get("error", {}))
                        if not isinstance(err, DaemonStopped) or stream.pid is not None:
                            raise err
                        raise ConnectionError("the daemon is stopping")
                    raise ConnectionError("the event stream ended")
        finally:
            if writer is not None:
                writer.close()
