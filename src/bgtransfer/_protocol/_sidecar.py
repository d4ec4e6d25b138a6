"""The self-describing partial: what a new store, another worker or ``bgtransfer adopt``
needs to resume a ``.part`` file with no access to the SQLite row that made it.

aria2's control files lack the URL (aria2#1689, #752), so a partial outliving its database is
lost. This record carries the URL(s), the validators, the length, the verified offset and
segments, and the checksums. It is kept as an extended attribute of the partial where the
filesystem has them (:data:`XATTR_NAME`, when it fits :data:`XATTR_LIMIT`), else in a small
file beside it (:func:`sidecar_path`), written with the store's durability order: the data
is fsynced before a record that vouches for it.

Request headers are never recorded: they are where credentials live. A URL is recorded as
given (a signed URL must be, to resume), so the engine writes the record with the
partial's own permissions (0600).

Pure: encode and decode bytes; the engine does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum, parse_checksum
from bgtransfer._protocol._segments import Segment, contiguous
from bgtransfer._protocol._validate import check_url

__all__ = [
    "MAX_RECORD",
    "SIDECAR_SUFFIX",
    "VERSION",
    "XATTR_LIMIT",
    "XATTR_NAME",
    "PartialRecord",
    "clip_to_file",
    "contiguous",
    "decode",
    "encode",
    "fits_xattr",
    "sidecar_path",
]

VERSION = 1
# Linux needs the "user." namespace for an unprivileged attribute; macOS takes any name.
XATTR_NAME = "user.bgtransfer.partial"
# ext4 keeps all attributes of an inode in one block (usually 4 KiB, headers included):
# a larger record goes to the sidecar file instead of failing with ENOSPC / E2BIG.
XATTR_LIMIT = 3800
SIDECAR_SUFFIX = ".bgtransfer.json"
MAX_RECORD = 16 << 20  # a sidecar bigger than this is not ours
_MAX_SEGMENTS = 4096
_KEYS = frozenset(
    {"v", "url", "mirrors", "path", "etag", "last_modified", "length", "offset", "segments"}
    | {"checksums", "partial"}
)


@dataclass(frozen=True, slots=True)
class PartialRecord:
    url: str
    offset: int  # bytes [0, offset) are written and fsynced (the single-stream resume point)
    length: int | None = None  # of the whole representation, when known
    etag: str | None = None
    last_modified: str | None = None
    segments: tuple[Segment, ...] = ()  # a segmented download's progress
    checksums: tuple[Checksum, ...] = ()  # the caller's, to check the finished file
    mirrors: tuple[str, ...] = ()  # other sources of the same file
    path: str | None = None  # the destination the partial was meant to become
    # The partial file's own name when the record was written: a sidecar found beside a
    # file of another name (copied or renamed alone) describes that other file.
    partial: str | None = None

    def __post_init__(self) -> None:
        check_url(self.url)
        for m in self.mirrors:
            check_url(m)
        if isinstance(self.offset, bool) or self.offset < 0:
            raise InvalidRequest(f"partial record: offset {self.offset} is negative")
        if self.length is not None and (self.length < 0 or self.offset > self.length):
            raise InvalidRequest(
                f"partial record: offset {self.offset} is past the length {self.length}"
            )
        _check_segments(self.segments, self.length)


def _check_segments(segments: Sequence[Segment], length: int | None) -> None:
    if len(segments) > _MAX_SEGMENTS:
        raise InvalidRequest(f"partial record: more than {_MAX_SEGMENTS} segments")
    if segments and length is None:
        raise InvalidRequest("partial record: segments need a known length")
    previous_end = 0
    for start, pos, end in sorted(segments):
        if not 0 <= start <= pos <= end or start < previous_end:
            raise InvalidRequest(f"partial record: segment {(start, pos, end)} is not valid")
        if length is not None and end > length:
            raise InvalidRequest(f"partial record: segment {(start, pos, end)} is past {length}")
        previous_end = end


def encode(record: PartialRecord) -> bytes:
    """Compact, key-sorted JSON (ASCII: it may go into an xattr or any filesystem)."""
    data: dict[str, Any] = {"v": VERSION, "url": record.url, "offset": record.offset}
    optional: dict[str, Any] = {
        "length": record.length,
        "etag": record.etag,
        "last_modified": record.last_modified,
        "segments": [list(s) for s in record.segments] or None,
        "checksums": [str(c) for c in record.checksums] or None,
        "mirrors": list(record.mirrors) or None,
        "path": record.path,
        "partial": record.partial,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _int(data: Mapping[str, Any], key: str, required: bool = False) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"partial record: {key!r} must be an integer, not {value!r}")
    return value


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"partial record: {key!r} must be a string, not {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise InvalidRequest(f"partial record: {key!r} must be a list, not {value!r}")
    return value


def _segment(item: object) -> Segment:
    if (
        not isinstance(item, list)
        or len(item) != 3
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
    ):
        raise InvalidRequest(f"partial record: a segment must be [start, pos, end], not {item!r}")
    return (item[0], item[1], item[2])


def decode(raw: bytes) -> PartialRecord:
    """A record from :func:`encode`, strictly checked: anything else is
    :class:`InvalidRequest`, so a damaged or foreign record never drives a resume."""
    if len(raw) > MAX_RECORD:
        raise InvalidRequest(f"partial record: larger than {MAX_RECORD} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"partial record: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest("partial record: not a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or version != VERSION:  # True == 1 in Python
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise InvalidRequest(
                f"partial record: version {version} was written by a newer bgtransfer"
            )
        raise InvalidRequest(f"partial record: unknown version {version!r}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InvalidRequest(f"partial record: unknown keys {unknown}")
    url = _str(data, "url")
    if url is None:
        raise InvalidRequest("partial record: no url")
    mirrors = _list(data, "mirrors")
    if not all(isinstance(m, str) for m in mirrors):
        raise InvalidRequest("partial record: 'mirrors' must be a list of URLs")
    checksums = _list(data, "checksums")
    return PartialRecord(
        url=url,
        offset=_int(data, "offset", required=True) or 0,
        length=_int(data, "length"),
        etag=_str(data, "etag"),
        last_modified=_str(data, "last_modified"),
        segments=tuple(_segment(s) for s in _list(data, "segments")),
        checksums=tuple(parse_checksum(c) for c in checksums),
        mirrors=tuple(mirrors),
        path=_str(data, "path"),
        partial=_str(data, "partial"),
    )


def sidecar_path(partial: str) -> str:
    """The file beside ``partial`` that holds its record where xattrs are unavailable."""
    return partial + SIDECAR_SUFFIX


def fits_xattr(encoded: bytes) -> bool:
    return len(encoded) <= XATTR_LIMIT


def clip_to_file(record: PartialRecord, file_size: int) -> tuple[PartialRecord, str | None]:
    """The record limited to the bytes the partial really has, and what was clipped.

    With the durability order the file is never shorter than its record; it can be after a
    copy cut short or a filesystem that lost data, and then resuming from the record would
    leave a hole of zeros. Bytes past the recorded progress are not trusted either (they
    were written but not vouched for): the engine truncates or overwrites them."""
    if file_size < 0:
        raise ValueError(f"file size {file_size} is negative")
    offset = min(record.offset, file_size)
    segments = tuple((s, max(s, min(p, file_size)), e) for s, p, e in record.segments)
    if offset == record.offset and segments == record.segments:
        return record, None
    why = f"the partial holds {file_size} bytes, fewer than its record says: resuming from them"
    return replace(record, offset=offset, segments=segments), why
