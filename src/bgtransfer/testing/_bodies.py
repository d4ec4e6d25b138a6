"""What ``/r`` and ``/gen`` serve: bodies that can be sliced without copying, and their
validators (ETag, Last-Modified) and versions."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import gzip
import hashlib
from dataclasses import dataclass
from typing import Final

from bgtransfer.testing._data import BLOCK, gen_block_view, gen_bytes

FIXED_LAST_MODIFIED: Final = "Wed, 01 Jan 2020 00:00:00 GMT"
AUTO_ETAGS: Final = frozenset({'"auto"', "auto"})
PIECE: Final = BLOCK


class Body:
    size: int

    def read(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def contiguous(self, offset: int) -> int:
        """How many bytes from offset can be served without copying."""
        raise NotImplementedError

    def materialize(self) -> bytes:
        return bytes(self.read(0, self.size))


class BytesBody(Body):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes | memoryview:
        return memoryview(self.data)[offset : offset + length]

    def contiguous(self, offset: int) -> int:
        return self.size - offset

    def materialize(self) -> bytes:
        return self.data


class GenBody(Body):
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


class LyingBody(Body):
    """``inner`` with the bytes in ``[start, end)`` changed: same length, other content."""

    _TABLE: Final = bytes(i ^ 0xA5 for i in range(256))

    def __init__(self, inner: Body, start: int, end: int) -> None:
        self.inner = inner
        self.size = inner.size
        self.start = start
        self.end = min(end, inner.size)

    def read(self, offset: int, length: int) -> bytes | memoryview:
        data = self.inner.read(offset, length)
        lo, hi = max(offset, self.start), min(offset + len(data), self.end)
        if lo >= hi:
            return data
        out = bytearray(data)
        out[lo - offset : hi - offset] = bytes(out[lo - offset : hi - offset]).translate(
            self._TABLE
        )
        return bytes(out)

    def contiguous(self, offset: int) -> int:
        return self.inner.contiguous(offset)


@functools.lru_cache(maxsize=8)
def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@functools.lru_cache(maxsize=4)
def gzip_gen(size: int, seed: int) -> bytes:
    return gzip.compress(gen_bytes(size, seed), mtime=0)


@dataclass
class Resource:
    data: bytes
    etag: str | None
    last_modified: str | None
    bumps: int = 0  # etag_change versions served so far


@dataclass
class Representation:
    body: Body
    etag: str | None
    last_modified: str | None


def auto_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def tagged_etag(etag: str | None, tag: str) -> str | None:
    """``"abc"`` -> ``"abc-<tag>"`` (weak or strong alike)."""
    if etag is None:
        return None
    if etag.endswith('"'):
        return etag[:-1] + f'-{tag}"'
    return f"{etag}-{tag}"


def versioned_etag(etag: str | None, version: int) -> str | None:
    if etag is None or version == 0:
        return etag
    if etag.endswith('"'):
        return etag[:-1] + f'-v{version}"'
    return f"{etag}-v{version}"


def shift_date(value: str | None, delta: dt.timedelta) -> str | None:
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


def xor_table(version: int) -> bytes:
    # Never XOR with 0, so every bumped version really has different bytes.
    k = (version - 1) % 255 + 1
    return bytes(i ^ k for i in range(256))


async def gzip_body(body: Body) -> bytes:
    # Compressing a large body would freeze every other connection on the loop.
    if isinstance(body, GenBody):
        if body.size <= PIECE:
            return gzip_gen(body.size, body.seed)
        return await asyncio.to_thread(gzip_gen, body.size, body.seed)
    data = body.materialize()
    if len(data) <= PIECE:
        return gzip_bytes(data)
    return await asyncio.to_thread(gzip_bytes, data)
