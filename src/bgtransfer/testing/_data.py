"""Deterministic, seekable pseudo-random content for ``/gen/<size>``.

The content of a generated file is built from a single 1 MiB random block per
seed: block ``k`` of the file is that block rotated left by
``(k * 7919 * 64) % BLOCK`` bytes, and the last block is truncated. Every block
therefore differs from its neighbours, so a client that writes bytes at the
wrong offset produces a detectable mismatch, while any slice can be computed in
O(length) without materialising the file. The server streams GiB-sized files
straight out of the cached (doubled) block with zero-copy memoryviews.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re

__all__ = [
    "BLOCK",
    "gen_block_view",
    "gen_bytes",
    "gen_chunk",
    "gen_sha256",
    "parse_size",
]

BLOCK = 1 << 20
_ROTATE_STEP = 7919 * 64

_SIZE_RE = re.compile(r"^(\d+)([KMGkmg]?)$")
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Parse ``123``, ``64K``, ``64M`` or ``1G`` (powers of 1024) into a byte count."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"bad size {text!r}: expected digits with optional K/M/G suffix")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


@functools.lru_cache(maxsize=16)
def _doubled_block(seed: int) -> bytes:
    # Storing the block twice turns every rotation into one contiguous slice,
    # which is what lets the server hand out memoryviews instead of copies.
    block = random.Random(seed).randbytes(BLOCK)
    return block + block


def _rotation(k: int) -> int:
    return (k * _ROTATE_STEP) % BLOCK


def gen_block_view(seed: int, offset: int, length: int) -> memoryview:
    """Zero-copy view of content bytes ``[offset, offset + length)``.

    The range must not cross a block boundary; callers split at boundaries.
    File size is not checked here: the caller clamps to it.
    """
    k, within = divmod(offset, BLOCK)
    if length < 0 or within + length > BLOCK:
        raise ValueError("view must stay inside one block")
    start = _rotation(k) + within
    return memoryview(_doubled_block(seed))[start : start + length]


def gen_chunk(size: int, seed: int, offset: int, length: int) -> bytes:
    """Return ``gen_bytes(size, seed)[offset:offset + length]`` without building the whole file."""
    if size < 0 or offset < 0 or length < 0:
        raise ValueError("size, offset and length must be non-negative")
    end = min(size, offset + length)
    parts: list[memoryview] = []
    pos = offset
    while pos < end:
        n = min(end - pos, BLOCK - pos % BLOCK)
        parts.append(gen_block_view(seed, pos, n))
        pos += n
    return b"".join(parts)


def gen_bytes(size: int, seed: int = 0) -> bytes:
    """The complete content of ``/gen/<size>?seed=<seed>``."""
    return gen_chunk(size, seed, 0, size)


@functools.lru_cache(maxsize=64)
def gen_sha256(size: int, seed: int = 0) -> str:
    """Hex SHA-256 of ``gen_bytes(size, seed)``, computed block by block."""
    if size < 0:
        raise ValueError("size must be non-negative")
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        n = min(size - pos, BLOCK)
        h.update(gen_block_view(seed, pos, n))
        pos += n
    return h.hexdigest()
