"""Integrity headers of ``/r`` and ``/gen`` answers, and the hashes behind them.

RFC 9530 digests are sent when the request asks for them (``Want-Repr-Digest`` /
``Want-Content-Digest``, whose preferences pick among sha-256 and sha-512) or a knob
says always; the cloud-storage headers only on their knobs. All of them can be made
wrong on purpose (``bad_digest``, a failure knob limited by ``times``); the bytes
stay right, so a client that checks the header is the one that notices.

``Repr-Digest``
    Of the whole selected representation (after ``gzip=1``, since that is then the
    representation), on 200 and 206 alike: ``sha-256=:<base64>:, sha-512=:<base64>:``.
``Content-Digest``
    Of the bytes of this answer's content: the whole body for a 200, the range for a
    206 (the bytes promised, whether or not a cut or reset delivers them).
``x-goog-hash: crc32c=<base64>,md5=<base64>`` (``goog_hash=1``) and
``x-amz-checksum-sha256: <base64>`` with ``x-amz-checksum-type: FULL_OBJECT``
(``amz_checksum=1``)
    Of the whole object, on every answer, as Google Cloud Storage and S3 do.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from bgtransfer.testing._bodies import Body, GenBody
from bgtransfer.testing._data import gen_sha256

DIGEST_ALGORITHMS: Final = ("sha-256", "sha-512")
_HASHLIB_NAMES: Final = {"sha-256": "sha256", "sha-512": "sha512", "md5": "md5"}
# Hash on the loop up to this size; a larger body goes to a thread.
_INLINE: Final = 1 << 20
_READ: Final = 1 << 20


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, RFC 3720 appendix B.4), as in ``x-goog-hash``.

    Table-driven Python (a few MB/s): the knob is meant for test-sized resources,
    and a C extension for one test header was not worth a dependency.
    """
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _digests(chunks: Iterable[bytes | memoryview], algorithms: tuple[str, ...]) -> dict[str, bytes]:
    hashers = {a: hashlib.new(_HASHLIB_NAMES[a]) for a in algorithms if a != "crc32c"}
    crc = 0
    for chunk in chunks:
        for h in hashers.values():
            h.update(chunk)
        if "crc32c" in algorithms:
            crc = crc32c(chunk, crc)
    out = {a: h.digest() for a, h in hashers.items()}
    if "crc32c" in algorithms:
        out["crc32c"] = crc.to_bytes(4, "big")
    return out


def _chunks(body: Body, start: int, end: int) -> Iterable[bytes | memoryview]:
    pos = start
    while pos < end:
        n = min(_READ, end - pos)
        yield body.read(pos, n)
        pos += n


@functools.lru_cache(maxsize=32)
def _gen_digests(
    size: int, seed: int, start: int, end: int, algorithms: tuple[str, ...]
) -> dict[str, bytes]:
    return _digests(_chunks(GenBody(size, seed), start, end), algorithms)


def sha256_hex(body: Body) -> str:
    """Hex SHA-256 of a whole body (on the caller's thread: for test-sized bodies)."""
    if isinstance(body, GenBody):
        return gen_sha256(body.size, body.seed)
    h = hashlib.sha256()
    for chunk in _chunks(body, 0, body.size):
        h.update(chunk)
    return h.hexdigest()


def piece_digests(body: Body, piece: int, algorithm: str = "sha-256") -> list[bytes]:
    """Digests of ``body`` cut into ``piece``-byte pieces (the last may be shorter)."""
    out = []
    for start in range(0, body.size, piece):
        h = hashlib.new(_HASHLIB_NAMES[algorithm])
        for chunk in _chunks(body, start, min(start + piece, body.size)):
            h.update(chunk)
        out.append(h.digest())
    return out


async def body_digests(
    body: Body, start: int, end: int, algorithms: tuple[str, ...]
) -> dict[str, bytes]:
    """Raw digests of ``body[start:end]`` by algorithm name (``sha-256``, ``md5``, ``crc32c``)."""
    if isinstance(body, GenBody):
        compute: Callable[[], dict[str, bytes]] = functools.partial(
            _gen_digests, body.size, body.seed, start, end, algorithms
        )
    else:
        compute = functools.partial(_digests, _chunks(body, start, end), algorithms)
    if end - start <= _INLINE:
        return compute()
    return await asyncio.to_thread(compute)


def wanted(value: str | None) -> tuple[str, ...]:
    """The algorithms a ``Want-*-Digest`` field asks for, best first (RFC 9530 section 4).

    Preferences are integers 0..10, 0 meaning "not acceptable". Unknown or malformed
    members are skipped; when nothing usable is left, sha-256 (a server may pick).
    """
    if value is None:
        return ()
    prefs: list[tuple[int, str]] = []
    for member in value.split(","):
        key, _, weight = member.strip().partition("=")
        key = key.strip().lower()
        try:
            pref = int(weight.strip()) if weight.strip() else 1
        except ValueError:
            continue
        if key in DIGEST_ALGORITHMS and pref > 0:
            prefs.append((pref, key))
    prefs.sort(key=lambda p: -p[0])
    return tuple(k for _, k in prefs) or ("sha-256",)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _spoil(raw: bytes) -> bytes:
    # One flipped bit: as wrong as a digest gets, and still well-formed.
    return bytes([raw[0] ^ 0x01]) + raw[1:]


def digest_field(digests: Mapping[str, bytes], algorithms: tuple[str, ...], *, bad: bool) -> str:
    """An RFC 9530 dictionary: ``sha-256=:<base64>:, sha-512=:<base64>:``."""
    return ", ".join(f"{a}=:{_b64(_spoil(digests[a]) if bad else digests[a])}:" for a in algorithms)


def goog_hash(digests: Mapping[str, bytes], *, bad: bool) -> str:
    crc, md5 = digests["crc32c"], digests["md5"]
    if bad:
        crc, md5 = _spoil(crc), _spoil(md5)
    return f"crc32c={_b64(crc)},md5={_b64(md5)}"


def amz_checksum(digests: Mapping[str, bytes], *, bad: bool) -> str:
    raw = digests["sha-256"]
    return _b64(_spoil(raw) if bad else raw)
