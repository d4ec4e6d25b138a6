"""The self-describing partial record: encode, strict decode, xattr/sidecar choice, clipping."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._sidecar import (
    MAX_RECORD,
    XATTR_LIMIT,
    XATTR_NAME,
    PartialRecord,
    clip_to_file,
    decode,
    encode,
    fits_xattr,
    sidecar_path,
)

SHA = Checksum("sha256", bytes(range(32)))
FULL = PartialRecord(
    url="https://h.example/big.iso?X-Amz-Signature=abc",
    offset=1000,
    length=10_000,
    etag='"v1"',
    last_modified="Sun, 29 Nov 2026 10:00:00 GMT",
    segments=((0, 1000, 5000), (5000, 7000, 10_000)),
    checksums=(SHA,),
    mirrors=("https://mirror.example/big.iso",),
    path="/data/big.iso",
)


def test_round_trip_full_and_minimal():
    assert decode(encode(FULL)) == FULL
    minimal = PartialRecord("http://h/x", 0)
    assert decode(encode(minimal)) == minimal
    assert json.loads(encode(minimal)) == {"v": 1, "url": "http://h/x", "offset": 0}


def test_encoding_is_compact_sorted_ascii():
    raw = encode(FULL)
    assert b'", "' not in raw
    assert b'": ' not in raw
    assert b"[[0,1000,5000],[5000,7000,10000]]" in raw
    assert raw.isascii()
    keys = list(json.loads(raw))
    assert keys == sorted(keys)
    assert json.loads(raw)["checksums"] == [f"sha256={bytes(range(32)).hex()}"]
    assert json.loads(encode(PartialRecord("http://h/é", 0)))["url"] == "http://h/é"


def test_no_header_is_ever_recorded():
    assert "headers" not in json.loads(encode(FULL))
    with pytest.raises(InvalidRequest, match="unknown keys"):
        decode(b'{"v":1,"url":"http://h/x","offset":0,"headers":{"Authorization":"x"}}')


def test_xattr_or_sidecar():
    assert XATTR_NAME.startswith("user.")
    assert fits_xattr(encode(FULL))
    many = PartialRecord(
        "https://h/x",
        0,
        1 << 30,
        segments=tuple((i * 100, i * 100, i * 100 + 100) for i in range(400)),
    )
    assert not fits_xattr(encode(many))
    assert len(encode(many)) > XATTR_LIMIT
    assert sidecar_path("/d/big.iso.part") == "/d/big.iso.part.bgtransfer.json"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"url":"http://h/x","offset":0}', "unknown version None"),
        (b'{"v":2,"url":"http://h/x","offset":0}', "newer bgtransfer"),
        (b'{"v":true,"url":"http://h/x","offset":0}', "unknown version"),
        (b'{"v":"1","url":"http://h/x","offset":0}', "unknown version"),
        (b'{"v":1,"offset":0}', "no url"),
        (b'{"v":1,"url":5,"offset":0}', "must be a string"),
        (b'{"v":1,"url":"file:///etc/passwd","offset":0}', "scheme"),
        (b'{"v":1,"url":"http://h/x"}', "'offset' must be an integer"),
        (b'{"v":1,"url":"http://h/x","offset":true}', "must be an integer"),
        (b'{"v":1,"url":"http://h/x","offset":1.5}', "must be an integer"),
        (b'{"v":1,"url":"http://h/x","offset":-1}', "negative"),
        (b'{"v":1,"url":"http://h/x","offset":11,"length":10}', "past the length"),
        (b'{"v":1,"url":"http://h/x","offset":0,"length":-1}', "past the length"),
        (b'{"v":1,"url":"http://h/x","offset":0,"etag":1}', "'etag' must be a string"),
        (b'{"v":1,"url":"http://h/x","offset":0,"segments":{}}', "must be a list"),
        (b'{"v":1,"url":"http://h/x","offset":0,"segments":[[0,1,2]]}', "known length"),
        (b'{"v":1,"url":"http://h/x","offset":0,"length":9,"segments":[[0,1]]}', "start, pos"),
        (
            b'{"v":1,"url":"http://h/x","offset":0,"length":9,"segments":[[0,true,2]]}',
            "start, pos",
        ),
        (b'{"v":1,"url":"http://h/x","offset":0,"length":9,"segments":[[2,1,3]]}', "not valid"),
        (
            b'{"v":1,"url":"http://h/x","offset":0,"length":9,"segments":[[0,1,5],[4,4,9]]}',
            "not valid",
        ),
        (b'{"v":1,"url":"http://h/x","offset":0,"length":9,"segments":[[0,1,10]]}', "past 9"),
        (b'{"v":1,"url":"http://h/x","offset":0,"checksums":["sha256=zz"]}', "64 hex"),
        (b'{"v":1,"url":"http://h/x","offset":0,"mirrors":[1]}', "list of URLs"),
        (b'{"v":1,"url":"http://h/x","offset":0,"mirrors":["ftp://h/x"]}', "scheme"),
    ],
)
def test_decode_refuses_damaged_or_foreign_records(raw, words):
    with pytest.raises(InvalidRequest, match=words):
        decode(raw)


def test_decode_refuses_huge_input():
    with pytest.raises(InvalidRequest, match="larger than"):
        decode(b" " * (MAX_RECORD + 1))


def test_too_many_segments():
    segs = tuple((i, i, i + 1) for i in range(4097))
    with pytest.raises(InvalidRequest, match="more than 4096"):
        PartialRecord("http://h/x", 0, 5000, segments=segs)


def test_clip_to_a_shorter_file():
    same, why = clip_to_file(FULL, 10_000)
    assert same is FULL
    assert why is None
    clipped, why = clip_to_file(FULL, 6000)
    assert clipped.offset == 1000
    assert clipped.segments == ((0, 1000, 5000), (5000, 6000, 10_000))
    assert why is not None
    assert "6000 bytes" in why
    empty, _ = clip_to_file(FULL, 0)
    assert empty.offset == 0
    assert empty.segments == ((0, 0, 5000), (5000, 5000, 10_000))
    with pytest.raises(ValueError, match="negative"):
        clip_to_file(FULL, -1)


@st.composite
def records(draw: st.DrawFn) -> PartialRecord:
    length = draw(st.integers(min_value=0, max_value=1 << 40))
    cuts = sorted(
        draw(st.lists(st.integers(min_value=0, max_value=length), max_size=9, unique=True))
    )
    bounds = [0, *cuts, length] if cuts else []
    segments = []
    for start, end in itertools.pairwise(bounds):
        segments.append((start, draw(st.integers(min_value=start, max_value=end)), end))
    return PartialRecord(
        url=draw(st.sampled_from(["http://h/x", "https://h.example:8443/a/b?c=d&e=%20f"])),
        offset=draw(st.integers(min_value=0, max_value=length)),
        length=length,
        etag=draw(st.none() | st.text(max_size=20)),
        last_modified=draw(st.none() | st.text(max_size=30)),
        segments=tuple(segments),
        checksums=draw(st.sampled_from([(), (SHA,)])),
        mirrors=draw(st.sampled_from([(), ("https://m/x",)])),
        path=draw(st.none() | st.text(max_size=40)),
    )


@given(records())
def test_any_record_round_trips(record):
    raw = encode(record)
    assert raw.isascii()
    assert decode(raw) == record


@given(records(), st.integers(min_value=0, max_value=1 << 41))
def test_clipping_never_claims_more_than_the_file_has(record, size):
    clipped, why = clip_to_file(record, size)
    assert clipped.offset == min(record.offset, size)
    assert all(pos <= max(size, start) for start, pos, _ in clipped.segments)
    assert (why is None) == (clipped == record)


@given(st.binary(max_size=200))
def test_decode_raises_only_invalid_request(raw):
    try:
        decode(raw)
    except InvalidRequest:
        pass
