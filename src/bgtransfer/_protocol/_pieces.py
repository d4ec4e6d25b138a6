"""Piece hashes (Metalink ``<pieces>``, ``checksums=`` with a piece size): a bad piece is
found and fetched again alone, instead of the whole file (huggingface_hub#4060).

Pieces are fixed-size slices of the file, ``[i * size, min((i + 1) * size, length))``, each
with its own digest. Segments need not line up with pieces: :class:`PieceHasher` hashes an
in-order byte stream that may start anywhere and reports only the pieces it saw whole;
:func:`complete_pieces` tells, from the ranges written, which pieces the engine can read back
and check after the fact (pieces split across two segments are checked that way).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import ALGORITHMS, Hashers, algorithm_name, crc32c_available

__all__ = [
    "MAX_PIECES",
    "PieceHasher",
    "PiecePlan",
    "PieceSpec",
    "PieceTuple",
    "check_pieces",
    "complete_pieces",
    "parse_piece_spec",
    "plan_of",
    "refetch_ranges",
]

# A 1 TB file in 1 MiB pieces; more would make the hash list itself the problem.
MAX_PIECES = 1 << 20


@dataclass(frozen=True, slots=True)
class PiecePlan:
    algorithm: str  # canonical name (sha256, sha1, ...)
    piece_size: int
    hashes: tuple[bytes, ...]
    length: int  # of the whole file: the last piece is the remainder

    def __post_init__(self) -> None:
        algo = ALGORITHMS.get(self.algorithm)
        if algo is None:
            raise InvalidRequest(f"unsupported piece hash algorithm {self.algorithm!r}")
        if self.algorithm == "crc32c" and not crc32c_available():
            raise InvalidRequest("crc32c piece hashes need the google-crc32c package")
        if isinstance(self.piece_size, bool) or self.piece_size <= 0:
            raise InvalidRequest(f"piece size must be a positive integer, not {self.piece_size}")
        if self.length < 0:
            raise InvalidRequest(f"file length must not be negative: {self.length}")
        expected = -(-self.length // self.piece_size)  # ceil
        if len(self.hashes) != expected:
            raise InvalidRequest(
                f"{len(self.hashes)} piece hashes for {self.length} bytes in pieces of "
                f"{self.piece_size}: expected {expected}"
            )
        if expected > MAX_PIECES:
            raise InvalidRequest(f"{expected} pieces is more than {MAX_PIECES}")
        bad = [i for i, h in enumerate(self.hashes) if len(h) != algo.size]
        if bad:
            raise InvalidRequest(f"piece hash {bad[0]} is not a {self.algorithm} digest")

    @classmethod
    def from_hex(
        cls, algorithm: str, piece_size: int, hashes: Sequence[str], length: int
    ) -> PiecePlan:
        """From text as Metalink and the ``checksums=`` option give it."""
        name = algorithm_name(algorithm)
        if name is None:
            raise InvalidRequest(f"unsupported piece hash algorithm {algorithm!r}")
        raw: list[bytes] = []
        for i, text in enumerate(hashes):
            try:
                raw.append(bytes.fromhex(text.strip()))
            except ValueError:
                raise InvalidRequest(f"piece hash {i} is not hexadecimal: {text!r}") from None
        return cls(name, piece_size, tuple(raw), length)

    @property
    def count(self) -> int:
        return len(self.hashes)

    @property
    def weak(self) -> bool:
        return ALGORITHMS[self.algorithm].weak

    def piece_range(self, index: int) -> tuple[int, int]:
        """Bytes ``[start, end)`` of piece ``index``."""
        if not 0 <= index < self.count:
            raise IndexError(f"piece {index} of {self.count}")
        start = index * self.piece_size
        return start, min(start + self.piece_size, self.length)

    def piece_at(self, offset: int) -> int:
        """The piece holding byte ``offset``."""
        if not 0 <= offset < self.length:
            raise IndexError(f"offset {offset} outside {self.length} bytes")
        return offset // self.piece_size

    def verify(self, index: int, digest: bytes) -> bool:
        return hmac.compare_digest(self.hashes[index], digest)

    def verify_bytes(self, index: int, data: bytes) -> bool:
        """Check a piece read back from the file (it must be the whole piece)."""
        start, end = self.piece_range(index)
        if len(data) != end - start:
            return False
        return self.verify(index, _digest(self.algorithm, data))


@dataclass(frozen=True, slots=True)
class PieceSpec:
    """A caller's piece list before the file's length is known (``checksums=`` takes it
    with the whole-file ones); :meth:`plan` binds it once the server says the length."""

    algorithm: str
    piece_size: int
    hashes: tuple[bytes, ...]

    def plan(self, length: int) -> PiecePlan:
        """The plan for ``length`` bytes; :class:`InvalidRequest` when the list does not fit
        (then the file is not the one the caller described)."""
        return PiecePlan(self.algorithm, self.piece_size, self.hashes, length)


def parse_piece_spec(obj: object) -> PieceSpec:
    """``{"algorithm": "sha256", "piece_size": 1048576, "hashes": ["hex", ...]}``."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest(f"a piece list must be a mapping, not {type(obj).__name__}")
    unknown = sorted(str(k) for k in obj if k not in ("algorithm", "piece_size", "hashes"))
    if unknown:
        raise InvalidRequest(f"a piece list has unknown keys {unknown}")
    algorithm, size, hashes = obj.get("algorithm"), obj.get("piece_size"), obj.get("hashes")
    if not isinstance(algorithm, str):
        raise InvalidRequest(f"a piece list needs an algorithm name, not {algorithm!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidRequest(f"a piece list needs a positive integer piece_size, not {size!r}")
    if not isinstance(hashes, Sequence) or isinstance(hashes, str | bytes):
        raise InvalidRequest("a piece list needs its hashes as a list of hex strings")
    if len(hashes) > MAX_PIECES:
        raise InvalidRequest(f"more than {MAX_PIECES} piece hashes")
    if not all(isinstance(h, str) for h in hashes):
        raise InvalidRequest("a piece list needs its hashes as a list of hex strings")
    if not hashes:
        raise InvalidRequest("a piece list needs at least one hash")
    # a plan for whole pieces checks the algorithm and each hash's form
    plan = PiecePlan.from_hex(algorithm, size, hashes, len(hashes) * size)
    return PieceSpec(plan.algorithm, size, plan.hashes)


# How a task's spec keeps a piece list: (algorithm, piece size, hex digests).
PieceTuple = tuple[str, int, tuple[str, ...]]


def check_pieces(value: object) -> PieceTuple | None:
    """``pieces=`` as the options keep it. Takes a :class:`PieceSpec`, the mapping
    :func:`parse_piece_spec` reads, or the stored form ``(algorithm, size, [hex...])``."""
    if value is None:
        return None
    if isinstance(value, PieceSpec):
        spec = value
    elif isinstance(value, Mapping):
        spec = parse_piece_spec(value)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) == 3:
        algorithm, size, hashes = value
        spec = parse_piece_spec({"algorithm": algorithm, "piece_size": size, "hashes": hashes})
    else:
        raise InvalidRequest(
            "pieces must be a mapping like {'algorithm': 'sha256', 'piece_size': N, "
            f"'hashes': [HEX, ...]}}, not {type(value).__name__}"
        )
    return (spec.algorithm, spec.piece_size, tuple(h.hex() for h in spec.hashes))


def plan_of(pieces: PieceTuple, length: int) -> PiecePlan:
    """A stored piece list bound to the file's length (InvalidRequest: it does not fit)."""
    algorithm, size, hashes = pieces
    return PiecePlan.from_hex(algorithm, size, hashes, length)


def _digest(algorithm: str, data: bytes) -> bytes:
    h = Hashers([algorithm])
    h.update(data)
    return h.digests()[algorithm]


class PieceHasher:
    """Hashes one in-order stream of bytes starting at ``offset`` (a segment, or a resume)
    and yields ``(piece, ok)`` for each piece it saw from its first byte to its last.

    A stream that starts inside a piece skips that piece (its first bytes came from
    elsewhere): :func:`complete_pieces` finds it for a read-back check."""

    def __init__(self, plan: PiecePlan, offset: int) -> None:
        if not 0 <= offset <= plan.length:
            raise ValueError(f"offset {offset} outside {plan.length} bytes")
        self._plan = plan
        self._pos = offset
        self._hasher: Hashers | None = None
        self._index = -1
        if offset < plan.length:
            self._index = plan.piece_at(offset)
            if plan.piece_range(self._index)[0] == offset:
                self._hasher = Hashers([plan.algorithm])

    @property
    def position(self) -> int:
        return self._pos

    def feed(self, data: bytes) -> list[tuple[int, bool]]:
        """The pieces completed by ``data``, each with whether its digest matched."""
        plan = self._plan
        if self._pos + len(data) > plan.length:
            raise ValueError(f"{self._pos + len(data)} bytes is past the {plan.length} planned")
        done: list[tuple[int, bool]] = []
        view = memoryview(data)
        while view:
            end = plan.piece_range(self._index)[1]
            take = min(len(view), end - self._pos)
            if self._hasher is not None:
                self._hasher.update(bytes(view[:take]))
            view = view[take:]
            self._pos += take
            if self._pos == end:
                if self._hasher is not None:
                    digest = self._hasher.digests()[plan.algorithm]
                    done.append((self._index, plan.verify(self._index, digest)))
                if self._pos < plan.length:
                    self._index += 1
                    self._hasher = Hashers([plan.algorithm])
        return done


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def complete_pieces(plan: PiecePlan, written: Iterable[tuple[int, int]]) -> list[int]:
    """Pieces wholly inside the written ``[start, end)`` ranges (which may overlap)."""
    out: list[int] = []
    for start, end in _merge(written):
        first = -(-start // plan.piece_size)  # the first piece starting at or after `start`
        for index in range(first, plan.count):
            p_start, p_end = plan.piece_range(index)
            if p_end > end:
                break
            if p_start >= start:
                out.append(index)
    return out


def refetch_ranges(plan: PiecePlan, bad: Iterable[int]) -> list[tuple[int, int]]:
    """The byte ranges to fetch again: one per bad piece, never merged, so that a piece that
    fails again is known by itself and one bad piece costs one piece of traffic."""
    indexes = sorted(set(bad))
    for index in indexes:
        if not 0 <= index < plan.count:
            raise IndexError(f"piece {index} of {plan.count}")
    return [plan.piece_range(i) for i in indexes]
