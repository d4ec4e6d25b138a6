"""One file from several sources (``urls=[...]``, Metalink): which source serves the next
segment, which are set aside for a while, and which are dropped for serving other bytes.

Mixing segments of two different files is silent corruption (the #3 complaint in
research/user-demand.md), so a source is used only once its answer agrees with the
reference: the same length always; the same digest when both name one; and, unless a
checksum or piece hashes will check the bytes anyway, the same strong ETag. Mirrors of one
file on different servers usually have different ETags, so without a checksum a
disagreeing mirror is dropped (with its reason) rather than trusted.

Pure: times are passed in (monotonic seconds); the engine owns the requests and the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._metalink import LOWEST_PRIORITY, MetalinkUrl
from bgtransfer._protocol._ranges import _strong_etag
from bgtransfer._protocol._validate import check_url

__all__ = [
    "MirrorEvent",
    "MirrorSet",
    "Observed",
]


@dataclass(frozen=True, slots=True)
class Observed:
    """What one source's response says about the bytes it serves."""

    length: int | None
    etag: str | None = None
    digests: Mapping[str, bytes] = field(default_factory=dict)  # Repr-Digest & co, by algorithm


@dataclass(frozen=True, slots=True)
class MirrorEvent:
    """One line of the attempt history: a source set aside, back, dropped or accepted."""

    kind: str  # "accepted", "set-aside", "dropped"
    url: str
    reason: str
    at: float | None = None


@dataclass(slots=True)
class _Source:
    url: str
    priority: int
    order: int
    active: int = 0  # segments being fetched from it now
    failures: int = 0  # in a row; reset by a success
    bad_pieces: int = 0
    until: float = 0.0  # set aside until then
    accepted: bool = False  # its representation was checked against the reference
    dropped: str | None = None


class MirrorSet:
    """Selection and consistency state for the sources of one file.

    ``checksums`` and ``has_pieces`` say whether the bytes will be checked whatever the
    sources claim (then differing ETags are tolerated); ``length`` is the size announced by
    the caller or a Metalink file, when known.
    """

    def __init__(
        self,
        sources: Sequence[str | MetalinkUrl],
        *,
        length: int | None = None,
        checksums: Iterable[Checksum] = (),
        has_pieces: bool = False,
        max_per_source: int = 4,
        max_bad_pieces: int = 2,
        backoff: float = 5.0,
        max_backoff: float = 300.0,
    ) -> None:
        if not sources:
            raise InvalidRequest("at least one URL is needed")
        if max_per_source < 1 or max_bad_pieces < 1 or backoff <= 0 or max_backoff < backoff:
            raise InvalidRequest("mirror limits must be positive")
        self._sources: dict[str, _Source] = {}
        for i, s in enumerate(sources):
            url, prio = (s.url, s.priority) if isinstance(s, MetalinkUrl) else (s, LOWEST_PRIORITY)
            check_url(url)
            if url in self._sources:
                raise InvalidRequest(f"the same URL is given twice as a source: {url}")
            self._sources[url] = _Source(url, prio, i)
        self._length = length
        self._etag: str | None = None
        self._digests: dict[str, bytes] = {c.algorithm: c.digest for c in checksums}
        self._arbiter = bool(self._digests) or has_pieces
        self._max_per_source = max_per_source
        self._max_bad_pieces = max_bad_pieces
        self._backoff = backoff
        self._max_backoff = max_backoff
        self.history: list[MirrorEvent] = []

    # --- selection -------------------------------------------------------------------------

    def _usable(self, now: float) -> list[_Source]:
        return [s for s in self._sources.values() if s.dropped is None and s.until <= now]

    def pick(self, now: float) -> str | None:
        """The source for the next request (counted busy until :meth:`release`), or None when
        every live source is set aside or at ``max_per_source`` (see :meth:`next_ready`).

        Better priority first; among equals the least busy, then the one that failed least,
        then the order given: plain URL lists spread segments evenly over the sources."""
        free = [s for s in self._usable(now) if s.active < self._max_per_source]
        if not free:
            return None
        best = min(free, key=lambda s: (s.priority, s.active, s.failures, s.order))
        best.active += 1
        return best.url

    def release(self, url: str) -> None:
        source = self._get(url)
        source.active = max(0, source.active - 1)

    def next_ready(self, now: float) -> float | None:
        """When the first set-aside source comes back, or None when none is set aside (then
        :meth:`pick` waits for a :meth:`release`, or every source is dropped: see
        :attr:`live`)."""
        later = [s.until for s in self._sources.values() if s.dropped is None and s.until > now]
        return min(later, default=None)

    @property
    def live(self) -> list[str]:
        return [s.url for s in self._sources.values() if s.dropped is None]

    @property
    def dropped(self) -> dict[str, str]:
        return {s.url: s.dropped for s in self._sources.values() if s.dropped is not None}

    def _get(self, url: str) -> _Source:
        try:
            return self._sources[url]
        except KeyError:
            raise KeyError(f"not a source of this file: {url}") from None

    # --- health ----------------------------------------------------------------------------

    def failed(self, url: str, now: float, reason: str, retry_after: float | None = None) -> float:
        """Set a source aside after an error (or a speed far below the others'): for
        ``retry_after`` seconds when the server said so, else an exponential backoff.
        Returns when it may be used again."""
        source = self._get(url)
        source.failures += 1
        wait = min(self._backoff * 2 ** (source.failures - 1), self._max_backoff)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self._max_backoff))
        source.until = now + wait
        self.history.append(MirrorEvent("set-aside", url, f"{reason} (for {wait:g} s)", now))
        return source.until

    def succeeded(self, url: str) -> None:
        """Bytes arrived from ``url``: its failure streak is over."""
        self._get(url).failures = 0

    def drop(self, url: str, reason: str, now: float | None = None) -> None:
        source = self._get(url)
        if source.dropped is None:
            source.dropped = reason
            self.history.append(MirrorEvent("dropped", url, reason, now))

    def bad_piece(self, url: str, now: float | None = None) -> bool:
        """A piece from ``url`` failed its hash; True when that dropped the source (after
        ``max_bad_pieces``: one bad piece may be a flipped bit on the way, several are a
        mirror serving other bytes)."""
        source = self._get(url)
        source.bad_pieces += 1
        if source.bad_pieces >= self._max_bad_pieces:
            self.drop(url, f"{source.bad_pieces} pieces from it failed their hash", now)
            return True
        return False

    # --- consistency -----------------------------------------------------------------------

    def observe(self, url: str, seen: Observed, now: float | None = None) -> str | None:
        """Check a source's first answer against the reference; the reason it was dropped,
        or None when its bytes may be used. The first source to answer sets the reference
        for what the caller did not give."""
        source = self._get(url)
        if source.dropped is not None:
            return source.dropped
        reason = self._disagreement(seen)
        if reason is not None:
            self.drop(url, reason, now)
            return reason
        if self._length is None:
            self._length = seen.length
        for name, digest in seen.digests.items():
            self._digests.setdefault(name, digest)
        if self._etag is None:
            self._etag = _strong_etag(seen.etag)
        if not source.accepted:
            source.accepted = True
            self.history.append(MirrorEvent("accepted", url, "serves the same representation", now))
        return None

    def _disagreement(self, seen: Observed) -> str | None:
        if seen.length is None:
            return "it does not say the length of what it serves"
        if self._length is not None and seen.length != self._length:
            return f"it serves {seen.length} bytes, not {self._length}"
        common = sorted(set(seen.digests) & set(self._digests))
        for name in common:
            if seen.digests[name] != self._digests[name]:
                return f"its {name} digest differs from the expected one"
        if common or self._arbiter:
            return None  # a matching digest proves it; a checksum will check the bytes
        if not any(s.accepted for s in self._sources.values()):
            return None  # the first answer is the reference
        tag = _strong_etag(seen.etag)
        if self._etag is None or tag != self._etag:
            return (
                f"its validator ({tag or 'none'}) does not prove it serves the same bytes as "
                f"the first source ({self._etag or 'none'}), and no checksum will check them"
            )
        return None
