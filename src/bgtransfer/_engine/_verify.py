"""Integrity of a download (issue 17): what the finished bytes must hash to, and checking it.

What is expected comes from :mod:`bgtransfer._protocol._digest` and ``_pieces`` (pure): the
caller's ``sha256`` / ``checksums`` / ``pieces``, and what the server vouches for (RFC 9530
``Repr-Digest``, ``x-goog-hash``, ``x-amz-checksum-sha256``, the ``Content-Digest`` of a
200). This module does the I/O:

* :class:`_Tail` hashes the partial file from byte 0 *as it grows*, reading back what was
  written (one more descriptor, identity-checked) in a worker thread every ``STEP`` bytes,
  so the hashing runs beside the network instead of after it, and covers the bytes on disk,
  not those meant to be written. A resumed task (a new process) starts a new tail at byte 0:
  the committed prefix is re-read from disk while the rest downloads (hashlib objects
  cannot be persisted; re-reading 1 GiB from the page cache costs about 0.5 s of one core,
  spent in parallel with the transfer).
* :class:`BodyCheck` hashes one range response's body on the loop when it carries a
  ``Content-Digest`` (only range answers are asked for one: a 200's equals its
  ``Repr-Digest``).
* :meth:`Checks.ended` decides once the last byte is written: bad pieces are fetched again
  alone (:mod:`._repair`); a whole-file mismatch discards the bytes and restarts from 0 once
  (``RestartRequired``), then fails with :class:`IntegrityError` naming algorithm, source,
  expected and got.

A task with nothing to check costs nothing: no tail, no hashing, no extra descriptor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bgtransfer._engine._context import Context
from bgtransfer._engine._live import Live
from bgtransfer._engine._repair import repair
from bgtransfer._exceptions import IntegrityError, InvalidRequest
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._digest import (
    ALGORITHMS,
    Checksum,
    Expected,
    Hashers,
    Verdict,
    caller_checksums,
    crc32c_available,
    decide,
    parse_digest_field,
    server_checksums,
    want_digest_headers,
)
from bgtransfer._protocol._pieces import PieceHasher, PiecePlan, PieceTuple, plan_of
from bgtransfer._protocol._segments import Segment, contiguous

__all__ = [
    "STEP",
    "BodyCheck",
    "Checks",
    "Feed",
    "before_placing",
    "body_check",
    "contiguous",
    "want_headers",
]

log = logging.getLogger("bgtransfer")

STEP = 16 << 20  # the tail hashes what was written each time this much more is there
_READ = 1 << 20
_JOB = 64 << 20  # at most this much per job of the hashing thread
# Which one server digest to compute when several are offered: sha256 has CPU support.
_SERVER_PREFERENCE = ("sha256", "sha512", "sha384", "md5", "crc32c", "sha1")
_WANT = tuple(want_digest_headers())


def want_headers(headers: Iterable[tuple[str, str]], *, ranged: bool) -> list[tuple[str, str]]:
    """RFC 9530 asks to add to a request: ``Want-Repr-Digest`` always, ``Want-Content-Digest``
    on range requests (a 200's content digest is its representation's); none the caller set."""
    have = {k.lower() for k, _ in headers}
    return [
        (k, v) for k, v in _WANT if k.lower() not in have and (ranged or k != "Want-Content-Digest")
    ]


class _Lost(Exception):
    """The file being hashed is not the task's any more, or shorter than written."""


class _Tail:
    """Hashes the partial file from byte 0 up to what was written, in a worker thread, one
    bounded job at a time (so a replaced or abandoned tail stops within one job)."""

    def __init__(self, path: str, ident: tuple[int, int], algorithms: Iterable[str],
                 plan: PiecePlan | None) -> None:  # fmt: skip
        self.path = path
        self.ident = ident
        self.pos = 0
        self.hashers = Hashers(algorithms)
        self.pieces = PieceHasher(plan, 0) if plan is not None else None
        self.bad: list[int] = []
        self.failed: BaseException | None = None
        self.job: asyncio.Future[None] | None = None
        self.asked = 0
        self.dropped = False  # replaced: no more jobs

    def kick(self, upto: int) -> None:
        """Hash up to ``upto`` in the background (after the running job, if any)."""
        self.asked = max(self.asked, upto)
        if (self.job is not None and not self.job.done()) or self.failed or self.dropped:
            return
        if self.asked <= self.pos:
            return
        self.job = asyncio.get_running_loop().run_in_executor(None, self._hash, self.asked)
        self.job.add_done_callback(self._done)

    def _done(self, job: asyncio.Future[None]) -> None:
        if job.cancelled():
            return
        if job.exception() is not None:
            self.failed = job.exception()
            return
        self.kick(self.asked)  # more was written meanwhile

    def drop(self) -> None:
        self.dropped = True

    async def finish(self, upto: int) -> None:
        """Everything up to ``upto`` hashed (_Lost: the file is not the task's any more)."""
        self.kick(upto)
        while self.job is not None and not self.job.done():
            await asyncio.wait([self.job])
        if self.failed is not None:
            raise _Lost(str(self.failed))
        while self.pos < upto:  # the last job's callback may not have run yet
            if self.dropped:
                raise _Lost("the check was started over")
            await asyncio.get_running_loop().run_in_executor(None, self._hash, upto)

    def _hash(self, end: int) -> None:  # in a worker thread
        end = min(end, self.pos + _JOB)
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.ident:
                raise _Lost(f"partial file {self.path} was replaced")
            pos = self.pos
            while pos < end and not self.dropped:
                block = os.pread(fd, min(_READ, end - pos), pos)
                if not block:
                    raise _Lost(f"partial file {self.path} ends at byte {pos}, before {end}")
                self.hashers.update(block)
                if self.pieces is not None:
                    self.bad += [i for i, ok in self.pieces.feed(block) if not ok]
                pos += len(block)
                self.pos = pos
        finally:
            os.close(fd)


class BodyCheck:
    """The ``Content-Digest`` of one range response, hashed as its body arrives."""

    def __init__(self, checksum: Checksum, start: int, length: int | None) -> None:
        self.checksum = checksum
        self.start = start
        self.length = length
        self.seen = 0
        self.hashers = Hashers([checksum.algorithm])

    def update(self, data: bytes | memoryview) -> None:
        self.hashers.update(data)  # type: ignore[arg-type]  # hashlib takes any buffer
        self.seen += len(data)

    def mismatch(self) -> str | None:
        """Why the body is bad, when it arrived whole and does not match; else None."""
        if self.length is None or self.seen != self.length:
            return None  # cut short or cut by us: its digest cannot be checked
        got = self.hashers.digests()[self.checksum.algorithm]
        if self.checksum.matches(got):
            return None
        end = self.start + self.seen
        return (
            f"{self.checksum.algorithm} from Content-Digest of bytes {self.start}-{end - 1} "
            f"expected {self.checksum.hex()}, got {got.hex()}"
        )


def _computable(name: str) -> bool:
    return name != "crc32c" or crc32c_available()


def _server_expected(headers: Mapping[str, str], status: int) -> tuple[Expected, ...]:
    found = list(server_checksums(headers))
    if not found and status == 200 and "content-encoding" not in headers:
        # A whole 200: its content is the representation.
        found = [
            Expected(Checksum(n, d), "Content-Digest")
            for n, d in parse_digest_field(headers.get("content-digest")).items()
        ]
    return tuple(e for e in found if _computable(e.checksum.algorithm))


def _algorithms(
    caller: tuple[Expected, ...], server: tuple[Expected, ...], pieces: PieceTuple | None
) -> list[str]:
    """Every algorithm the caller named, plus the cheapest one of each server source. With
    a strong checksum or piece list of the caller's, server digests are not computed: the
    caller's is the truth (:func:`decide` would overrule a server that disagrees)."""
    names = [e.checksum.algorithm for e in caller]
    strong = _strong(names) or (pieces is not None and _strong([pieces[0]]))
    for source in dict.fromkeys(e.source for e in server):
        offered = {e.checksum.algorithm for e in server if e.source == source}
        if offered & set(names):
            continue
        pick = next((n for n in _SERVER_PREFERENCE if n in offered), None)
        if pick is not None and not strong:
            names.append(pick)
    return list(dict.fromkeys(names))


def _strong(names: Iterable[str]) -> bool:
    return any(not ALGORITHMS[n].weak for n in names)


@dataclass(eq=False)
class _State:
    caller: tuple[Expected, ...]
    server: tuple[Expected, ...] = ()
    tail: _Tail | None = None
    plan: PiecePlan | None = None
    retries: int = 0  # whole-file mismatches that restarted the download
    concluded: bool = False  # the finished bytes were checked (the seal need not)
    piece_tries: dict[int, int] = field(default_factory=dict)

    def set_tail(self, tail: _Tail | None) -> None:
        """Replace the tail; the old one stops at the end of its running job."""
        if self.tail is not None and self.tail is not tail:
            self.tail.drop()
        self.tail = tail

    def make_tail(self, live: Live, names: Iterable[str]) -> _Tail:
        st = os.fstat(live.part.fd)
        tail = _Tail(live.part.path, (st.st_dev, st.st_ino), names, self.plan)
        self.set_tail(tail)
        return tail


_STATES: weakref.WeakKeyDictionary[Live, _State] = weakref.WeakKeyDictionary()


def _state(live: Live) -> _State:
    state = _STATES.get(live)
    if state is None:
        spec = live.machine.spec
        # ``sha256=`` keeps its own check: the seal reads the finished file back (_files).
        state = _STATES[live] = _State(caller_checksums(spec.checksums, None))
    return state


def _first_expected(live: Live) -> tuple[Expected, ...]:
    """What the response that began the file vouched for (a resume's 206 may not say)."""
    snap = live.machine.snap
    if snap.response_status not in (200, 206):
        return ()
    headers: dict[str, str] = {}
    for k, v in snap.response_headers:
        key = k.lower()
        headers[key] = f"{headers[key]}, {v}" if key in headers else v
    return _server_expected(headers, snap.response_status or 0)


async def before_placing(live: Live) -> M.Event | None:
    """The last word before a finished file gets its name. Downloads whose body ended in
    this process were checked then (:meth:`Checks.ended`); one found complete otherwise
    (a 416 to the resume after a crash or suspend during the checks) is checked here in
    full, read back from disk, without a retry: ``FinalizeFailed`` on any mismatch."""
    state = _state(live)
    m = live.machine
    if state.concluded or m.spec.kind != "download":
        return None
    server = state.server or _first_expected(live)
    names = _algorithms(state.caller, server, m.spec.pieces)
    total = m.snap.offset
    plan = None
    if m.spec.pieces is not None:
        try:
            plan = plan_of(m.spec.pieces, total)
        except InvalidRequest as exc:
            return M.FinalizeFailed(IntegrityError(f"the piece list does not fit: {exc.message}"))
    if not names and plan is None:
        return None
    ident = live.part.ident[2:4] if len(live.part.ident) == 5 else ()
    if len(ident) != 2:
        return M.FinalizeFailed(IntegrityError("the partial file's identity is not known"))
    tail = _Tail(live.part.path, (ident[0], ident[1]), names, plan)
    try:
        await tail.finish(total)
    except (_Lost, OSError) as exc:
        return M.FinalizeFailed(IntegrityError(f"cannot check the downloaded bytes: {exc}"))
    if tail.bad:
        assert plan is not None
        first = min(tail.bad)
        start, end = plan.piece_range(first)
        return M.FinalizeFailed(
            IntegrityError(f"piece {first} (bytes {start}-{end - 1}) does not match its hash")
        )
    decision = decide((*state.caller, *server), tail.hashers.digests(), retries_done=1)
    if decision.verdict is Verdict.FAIL:
        return M.FinalizeFailed(IntegrityError(decision.reason))
    state.concluded = True
    return None


async def _finish(state: _State, tail: _Tail, total: int) -> M.Event | None:
    """Hash what is left; a restart when the file cannot be read back as written."""
    try:
        await tail.finish(total)
    except (_Lost, OSError) as exc:
        state.set_tail(None)
        return M.RestartRequired(f"cannot check the downloaded bytes: {exc}")
    return None


class Feed:
    """What a body writer tells the checks: each chunk written (and where), then the end."""

    def __init__(self, checks: Checks, live: Live, state: _State) -> None:
        self.checks = checks
        self.live = live
        self.state = state
        self.body: BodyCheck | None = None  # the plain download's response
        self.kick_at = 0
        self.unhashed = 0  # segments: bytes written since the tail was last kicked

    def wrote(self, data: bytes | memoryview, reach: int) -> None:
        """``data`` was written at the end of the file, which is now ``reach`` long."""
        if self.body is not None:
            self.body.update(data)
        if reach >= self.kick_at:
            tail = self.state.tail
            if tail is not None:
                tail.kick(reach)
            self.kick_at = reach + STEP

    def segment_wrote(self, nbytes: int, segments: tuple[Segment, ...]) -> None:
        """A segment wrote ``nbytes``: the tail follows the part without holes."""
        self.unhashed += nbytes
        if self.unhashed >= STEP:
            self.unhashed = 0
            tail = self.state.tail
            if tail is not None:
                tail.kick(contiguous(segments))

    async def ended(self, total: int) -> M.Event:
        return await self.checks.ended(self.live, self.state, self, total)


def body_check(status: int, headers: Mapping[str, str], start: int) -> BodyCheck | None:
    """A check of a range response's ``Content-Digest``, when it has one."""
    if status != 206:
        return None
    digests = parse_digest_field(headers.get("content-digest"))
    name = next((n for n in _SERVER_PREFERENCE if n in digests and _computable(n)), None)
    if name is None:
        return None
    length = headers.get("content-length")
    size = int(length) if length is not None and length.isdigit() else None
    return BodyCheck(Checksum(name, digests[name]), start, size)


class Checks:
    """The integrity checks of the engine's downloads (one per engine)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def begin(self, live: Live, status: int, headers: Mapping[str, str], start: int,
              *, restart: bool) -> Feed | M.Event | None:  # fmt: skip
        """Before a body is written from ``start`` (the part is open; ``restart``: from 0
        over an older version's bytes): a :class:`Feed` when anything is to be checked, an
        event when the piece list cannot be this file's, else None (nothing to check costs
        nothing)."""
        m = live.machine
        state = _state(live)
        state.concluded = False
        server = _server_expected(headers, status) or _first_expected(live)
        if server or not state.server:
            state.server = server
        if restart or (state.tail is not None and state.tail.pos > start):
            # The bytes it hashed are about to be overwritten (another version, or a
            # resume before what it read): a new tail from byte 0.
            state.set_tail(None)
            state.plan = None
        if m.snap.total is not None:
            bad = self._plan(live, state, m.snap.total)
            if bad is not None:
                return bad
        names = _algorithms(state.caller, state.server, m.spec.pieces)
        if state.tail is not None and set(state.tail.hashers.algorithms) != set(names):
            state.set_tail(None)
        feed = Feed(self, live, state)
        feed.body = body_check(status, headers, start)
        if names or state.plan is not None:
            if state.tail is None:
                state.make_tail(live, names)
        elif m.spec.pieces is None and feed.body is None:
            return None
        return feed

    @staticmethod
    def _plan(live: Live, state: _State, total: int) -> M.Event | None:
        """Bind the caller's piece list to the file's length (a misfit fails the task)."""
        pieces = live.machine.spec.pieces
        if pieces is None or state.plan is not None:
            return None
        try:
            state.plan = plan_of(pieces, total)
        except InvalidRequest as exc:
            return M.Failed(IntegrityError(f"the piece list does not fit: {exc.message}"))
        state.set_tail(None)  # a tail without the plan would not check the pieces
        return None

    async def ended(self, live: Live, state: _State, feed: Feed, total: int) -> M.Event:
        """The last byte is written: check everything, repair bad pieces."""
        m = live.machine
        if m.snap.total is not None and m.snap.offset < m.snap.total:
            return M.BodyEnded()  # short: the machine retries, nothing to check yet
        bad_body = feed.body.mismatch() if feed.body is not None else None
        if bad_body is not None:
            return self.bad_body(live, bad_body)
        bad_plan = self._plan(live, state, total)
        if bad_plan is not None:
            return bad_plan
        names = _algorithms(state.caller, state.server, m.spec.pieces)
        if not names and state.plan is None:
            state.concluded = True
            return M.BodyEnded()  # only a Content-Digest was to be checked, and it was
        tail = state.tail or state.make_tail(live, names)
        lost = await _finish(state, tail, total)
        if lost is not None:
            return lost
        if tail.bad:
            assert state.plan is not None
            event = await repair(self.ctx, live, state.plan, sorted(set(tail.bad)),
                                 state.piece_tries)  # fmt: skip
            if event is not None:
                state.set_tail(None)
                return event
            if tail.hashers.algorithms:
                # The pieces fetched again changed bytes the whole-file hash has seen.
                tail = _Tail(tail.path, tail.ident, tail.hashers.algorithms, None)
                state.set_tail(tail)
                lost = await _finish(state, tail, total)
                if lost is not None:
                    return lost
        return self._decide(live, state, tail.hashers.digests())

    def _decide(self, live: Live, state: _State, computed: Mapping[str, bytes]) -> M.Event:
        decision = decide((*state.caller, *state.server), computed, retries_done=state.retries)
        state.concluded = decision.verdict in (Verdict.OK, Verdict.UNVERIFIED)
        if decision.verdict is Verdict.RETRY:
            return self._mismatch(live, state, decision.reason)
        if decision.verdict is Verdict.FAIL:
            return M.Failed(IntegrityError(decision.reason))
        if decision.verdict is Verdict.OK:
            weak = " (weak: md5/sha1/crc32c only)" if decision.weak_only else ""
            log.info("task %s: %s%s", live.row.id, decision.reason, weak)
            for note in decision.ignored:
                log.warning("task %s: server digest overruled by the caller's: %s",
                            live.row.id, note)  # fmt: skip
        return M.BodyEnded()

    def bad_body(self, live: Live, why: str) -> M.Event:
        """A response's body does not match its Content-Digest: start over once, then fail."""
        state = _state(live)
        if state.retries >= 1:
            return M.Failed(IntegrityError(f"checksum mismatch after 2 tries: {why}"))
        return self._mismatch(live, state, f"checksum mismatch ({why}): fetching again")

    def _mismatch(self, live: Live, state: _State, reason: str) -> M.Event:
        """Discard the bytes and start over from 0 (the first mismatch)."""
        state.set_tail(None)
        state.retries += 1
        attempt, live.attempt = live.attempt, None
        if attempt is not None:
            self.ctx.history.close(live, attempt, reason)
        log.warning("task %s: %s", live.row.id, reason)
        return M.RestartRequired(reason)
