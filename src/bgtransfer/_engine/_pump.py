"""A body read in a thread of its own, handed to the event loop in a few rotating buffers.

Over TLS the fast path's cost is decryption and the socket reads around it; on the event loop
they ran one after the other with the file write and the checkpoints' fdatasync. Here a
thread fills buffer B (blocking: the socket, the TLS session's decrypt) while the loop writes
buffer A, so the two overlap on two cores: ``SSLObject.read``, ``recv_into`` and ``os.write``
all release the GIL. Everything that decides (the machine, the file, the commits, the idle
timeout, pacing, the watchdog) stays on the loop, which sees the same stream of chunks as
before; only where the bytes come from changed.

A :class:`Pump` owns its buffers: a chunk :meth:`Pump.read` returns is the loop's until its
next ``read`` (or ``close``), then it goes back to the thread. At most ``depth`` buffers
exist, so the thread is at most ``depth - 1`` buffers ahead of the loop; when the loop stops
taking them (a slow disk, a rate cap) the thread waits and TCP's window pushes back on the
server, as when nobody reads the socket.

Stopping is prompt and bounded: :meth:`Pump.close` asks the source to halt (it shuts its
socket down, which wakes a blocked poll), wakes a thread waiting for a buffer, and joins it
for at most ``JOIN_TIMEOUT`` seconds. What the thread shares with the loop (the TLS session,
the descriptor) is released only once the thread has stopped: at once, or from the thread's
own exit if the join timed out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["JOIN_TIMEOUT", "Pump", "Source"]

log = logging.getLogger("bgtransfer")

# How long close() blocks the loop for the thread at most. The thread is then inside one
# decrypt of at most a buffer (well under a millisecond) or a poll that the halt woke.
JOIN_TIMEOUT = 2.0
# How long the thread waits for a free buffer before it looks at its stop flag again (a
# close also wakes it at once).
_WAIT_STEP = 0.5


class Source(Protocol):
    """Where a pump reads from. ``fill`` runs in the pump's thread, everything else on the
    loop (``halt`` may run while ``fill`` is blocked in the thread)."""

    def fill(self, view: memoryview) -> int:
        """Block until some bytes are in ``view``; their count, 0 at the end of the stream.
        Returns a part of the view when the source goes quiet, so the loop keeps hearing
        of progress on a slow stream."""
        ...

    def halt(self) -> None:
        """Make a blocked or later ``fill`` return (0 or an error) promptly."""
        ...


# A filled buffer and its byte count, or what the thread met.
_Item = tuple[memoryview, int] | BaseException


class Pump:
    def __init__(
        self,
        source: Source,
        remaining: int,
        *,
        size: int,
        depth: int,
        on_stopped: Callable[[], None],
    ) -> None:
        if depth < 2:
            raise ValueError("a pump needs at least two buffers to overlap")
        self._source = source
        self._left = remaining  # the thread's count: bytes it may still read
        self._size = size
        self._depth = depth
        self._on_stopped = on_stopped
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._free: list[memoryview] = []
        self._made = 0
        self._limit = size
        self._ready: deque[_Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._held: memoryview | None = None
        self._stop = False
        self._done = False  # the thread has left
        self._orphaned = False  # close() gave up waiting: the thread calls on_stopped
        self._finished = False  # on_stopped has run
        self._thread: threading.Thread | None = None

    @property
    def buffers(self) -> int:
        """How many buffers the thread has made so far (at most ``depth``)."""
        return self._made

    # -- the loop's side ----------------------------------------------------------------------

    async def read(self, limit: int) -> memoryview:
        """The next chunk, at most ``limit`` bytes (and the buffer size); empty at the end
        of the stream. Raises what the thread met (``ssl.SSLError``, ``OSError``). The
        chunk of the previous call goes back to the thread first."""
        self._give_back()
        with self._cond:
            self._limit = max(1, limit)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bgtransfer-body", daemon=True)
            self._thread.start()
        item = self._pop()
        if item is None:
            waiter = self._waiter
            assert waiter is not None
            await waiter  # cancelled by a timeout or a stop: close() follows
            item = self._pop()
            assert item is not None  # the thread wakes the waiter only after a put
        if isinstance(item, BaseException):
            raise item
        buf, n = item
        self._held = buf
        return buf[:n]

    def _pop(self) -> _Item | None:
        with self._cond:
            if self._ready:
                return self._ready.popleft()
            self._waiter = self._loop.create_future()
            return None

    def _give_back(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with self._cond:
                self._free.append(held)
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread (bounded) and release what it shared with the loop."""
        thread = self._thread
        with self._cond:
            self._stop = True
            self._held = None
            self._cond.notify_all()
            running = thread is not None and not self._done
        if running:
            self._source.halt()
            assert thread is not None
            thread.join(JOIN_TIMEOUT)
            with self._cond:
                if not self._done:
                    # Never seen: a decrypt that does not return. Its resources go when it does.
                    log.warning("the body reader thread did not stop in %g s", JOIN_TIMEOUT)
                    self._orphaned = True
                    return
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_stopped()

    # -- the thread's side --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._left > 0:
                buf = self._take_free()
                if buf is None:
                    return
                with self._cond:
                    limit = min(self._limit, self._left, len(buf))
                n = self._source.fill(buf[:limit])
                self._left -= n
                self._put((buf, n))
                if n == 0:
                    return  # the end of the stream (early, unless nothing was left)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self._put(exc)
        finally:
            with self._cond:
                self._done = True
                orphaned = self._orphaned
            if orphaned:
                try:
                    self._loop.call_soon_threadsafe(self._finish)
                except RuntimeError:  # the loop is closed: nothing is left to release on it
                    pass

    def _take_free(self) -> memoryview | None:
        with self._cond:
            for _ in range(1 << 30):  # each pass waits at most _WAIT_STEP
                if self._stop:
                    return None
                if self._free:
                    return self._free.pop()
                if self._made < self._depth:
                    self._made += 1
                    break
                self._cond.wait(_WAIT_STEP)
        # Made lazily: a body the loop keeps up with needs two buffers, not depth.
        return memoryview(bytearray(self._size))

    def _put(self, item: _Item) -> None:
        with self._cond:
            if self._stop:
                return
            self._ready.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the loop is closed
                pass


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
