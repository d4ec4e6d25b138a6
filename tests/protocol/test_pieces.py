"""Piece-hash plans: which ranges are pieces, checking them, and re-fetching bad ones alone."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import crc32c_available
from bgtransfer._protocol._pieces import (
    MAX_PIECES,
    PieceHasher,
    PiecePlan,
    PieceSpec,
    complete_pieces,
    parse_piece_spec,
    refetch_ranges,
)

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes: 10 pieces of 1024 and one of 4


def plan_for(data: bytes, size: int, algorithm: str = "sha256") -> PiecePlan:
    hashes = tuple(
        hashlib.new(algorithm, data[i : i + size]).digest() for i in range(0, len(data), size)
    )
    return PiecePlan(algorithm, size, hashes, len(data))


def test_piece_ranges_and_lookup():
    plan = plan_for(DATA, 1024)
    assert plan.count == 11
    assert plan.piece_range(0) == (0, 1024)
    assert plan.piece_range(10) == (10240, 10244)
    assert plan.piece_at(0) == 0
    assert plan.piece_at(1023) == 0
    assert plan.piece_at(1024) == 1
    assert plan.piece_at(10243) == 10
    with pytest.raises(IndexError):
        plan.piece_range(11)
    with pytest.raises(IndexError):
        plan.piece_range(-1)
    with pytest.raises(IndexError):
        plan.piece_at(10244)
    assert not plan.weak
    assert plan_for(DATA, 1024, "sha1").weak


def test_verify_bytes():
    plan = plan_for(DATA, 1024)
    assert plan.verify_bytes(3, DATA[3072:4096])
    assert plan.verify_bytes(10, b"tail")
    assert not plan.verify_bytes(3, DATA[3072:4095] + b"X")
    assert not plan.verify_bytes(3, DATA[3072:4095])  # short


def test_from_hex_and_validation():
    plan = plan_for(DATA, 1024)
    again = PiecePlan.from_hex("SHA-256", 1024, [h.hex() for h in plan.hashes], len(DATA))
    assert again == plan
    with pytest.raises(InvalidRequest, match="not hexadecimal"):
        PiecePlan.from_hex("sha-256", 1024, ["zz"] * 11, len(DATA))
    with pytest.raises(InvalidRequest, match="unsupported"):
        PiecePlan.from_hex("tiger", 1024, [], 0)
    with pytest.raises(InvalidRequest, match="expected 11"):
        PiecePlan("sha256", 1024, plan.hashes[:-1], len(DATA))
    with pytest.raises(InvalidRequest, match="positive"):
        PiecePlan("sha256", 0, (), 0)
    with pytest.raises(InvalidRequest, match="positive"):
        PiecePlan("sha256", True, (), 0)
    with pytest.raises(InvalidRequest, match="negative"):
        PiecePlan("sha256", 10, (), -1)
    with pytest.raises(InvalidRequest, match="not a sha256 digest"):
        PiecePlan("sha256", 1024, (*plan.hashes[:-1], b"short"), len(DATA))
    with pytest.raises(InvalidRequest, match="unsupported"):
        PiecePlan("whirlpool", 1024, (), 0)
    assert PiecePlan("sha256", 1024, (), 0).count == 0


def test_hasher_from_the_start_reports_every_piece():
    plan = plan_for(DATA, 1024)
    h = PieceHasher(plan, 0)
    seen: list[tuple[int, bool]] = []
    for i in range(0, len(DATA), 700):  # chunks that straddle piece boundaries
        seen += h.feed(DATA[i : i + 700])
    assert seen == [(i, True) for i in range(11)]
    assert h.position == len(DATA)


def test_hasher_finds_the_bad_piece():
    plan = plan_for(DATA, 1024)
    corrupt = bytearray(DATA)
    corrupt[5000] ^= 0xFF  # piece 4
    seen = PieceHasher(plan, 0).feed(bytes(corrupt))
    assert [i for i, ok in seen if not ok] == [4]
    assert refetch_ranges(plan, [i for i, ok in seen if not ok]) == [(4096, 5120)]


def test_hasher_starting_mid_piece_skips_that_piece():
    plan = plan_for(DATA, 1024)
    h = PieceHasher(plan, 1500)
    assert h.feed(DATA[1500:4096]) == [(2, True), (3, True)]  # piece 1 began elsewhere
    assert PieceHasher(plan, 2048).feed(DATA[2048:3000]) == []  # not finished yet


def test_hasher_refuses_bytes_past_the_end():
    plan = plan_for(DATA, 1024)
    h = PieceHasher(plan, 10240)
    with pytest.raises(ValueError, match="past"):
        h.feed(b"tail!")
    with pytest.raises(ValueError, match="outside"):
        PieceHasher(plan, len(DATA) + 1)
    assert PieceHasher(plan, len(DATA)).feed(b"") == []


def test_complete_pieces_from_written_ranges():
    plan = plan_for(DATA, 1024)
    assert complete_pieces(plan, []) == []
    assert complete_pieces(plan, [(0, 1023)]) == []
    assert complete_pieces(plan, [(0, 1024)]) == [0]
    # two segments that meet inside piece 1 complete it together
    assert complete_pieces(plan, [(0, 1500), (1500, 3000)]) == [0, 1]
    assert complete_pieces(plan, [(100, 5000)]) == [1, 2, 3]
    assert complete_pieces(plan, [(9000, 10244)]) == [9, 10]
    assert complete_pieces(plan, [(0, 2048), (1024, 2048), (5, 5)]) == [0, 1]


def test_refetch_ranges_one_per_bad_piece_never_merged():
    plan = plan_for(DATA, 1024)
    assert refetch_ranges(plan, [3, 2, 3, 10]) == [(2048, 3072), (3072, 4096), (10240, 10244)]
    assert refetch_ranges(plan, []) == []
    with pytest.raises(IndexError):
        refetch_ranges(plan, [11])


@given(
    st.binary(min_size=0, max_size=3000),
    st.integers(min_value=1, max_value=700),
    st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=10),
    st.data(),
)
def test_hasher_any_chunking_any_start(data, size, chunk_sizes, draw):
    plan = plan_for(data, size)
    start = draw.draw(st.integers(min_value=0, max_value=len(data)))
    h = PieceHasher(plan, start)
    seen: list[tuple[int, bool]] = []
    pos, k = start, 0
    while pos < len(data):
        step = chunk_sizes[k % len(chunk_sizes)]
        seen += h.feed(data[pos : pos + step])
        pos += step
        k += 1
    first_whole = -(-start // size)
    assert seen == [(i, True) for i in range(first_whole, plan.count)]
    assert [i for i, _ in seen] == complete_pieces(plan, [(start, len(data))])


@given(st.binary(min_size=1, max_size=2000), st.integers(min_value=1, max_value=300), st.data())
def test_one_flipped_byte_is_found_in_its_piece_only(data, size, draw):
    plan = plan_for(data, size)
    where = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    corrupt = bytearray(data)
    corrupt[where] ^= 0x01
    seen = PieceHasher(plan, 0).feed(bytes(corrupt))
    bad = [i for i, ok in seen if not ok]
    assert bad == [where // size]
    ((start, end),) = refetch_ranges(plan, bad)
    assert start <= where < end
    assert end - start <= size


def test_piece_spec_from_the_caller_binds_to_the_length():
    plan = plan_for(DATA, 1024)
    spec = parse_piece_spec(
        {"algorithm": "sha-256", "piece_size": 1024, "hashes": [h.hex() for h in plan.hashes]}
    )
    assert spec == PieceSpec("sha256", 1024, plan.hashes)
    assert spec.plan(len(DATA)) == plan
    assert spec.plan(10241).count == 11  # any length with 11 pieces fits
    with pytest.raises(InvalidRequest, match="expected 12"):
        spec.plan(11 * 1024 + 1)
    with pytest.raises(InvalidRequest, match="expected 10"):
        spec.plan(10 * 1024)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ([], "must be a mapping"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": ["00" * 32], "x": 1}, "unknown keys"),
        ({"piece_size": 4, "hashes": ["00" * 32]}, "algorithm name"),
        ({"algorithm": "sha256", "piece_size": 0, "hashes": ["00" * 32]}, "positive integer"),
        ({"algorithm": "sha256", "piece_size": True, "hashes": ["00" * 32]}, "positive integer"),
        ({"algorithm": "sha256", "piece_size": "4", "hashes": ["00" * 32]}, "positive integer"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": "00" * 32}, "list of hex"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": [b"\0" * 32]}, "list of hex"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": []}, "at least one"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": ["00" * 31]}, "not a sha256 digest"),
        ({"algorithm": "sha256", "piece_size": 4, "hashes": ["xx" * 32]}, "not hexadecimal"),
        ({"algorithm": "blake3", "piece_size": 4, "hashes": ["00" * 32]}, "unsupported"),
    ],
)
def test_piece_spec_refuses_bad_input(obj, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_piece_spec(obj)


@pytest.mark.skipif(not crc32c_available(), reason="google-crc32c not installed")
def test_crc32c_pieces_work_when_the_library_is_there():
    plan = PiecePlan("crc32c", 9, (bytes.fromhex("e3069283"),), 9)
    assert PieceHasher(plan, 0).feed(b"123456789") == [(0, True)]


def test_piece_count_bound_is_inclusive():
    hashes = (bytes(16),) * MAX_PIECES
    assert PiecePlan("md5", 1, hashes, MAX_PIECES).count == MAX_PIECES
    with pytest.raises(
        InvalidRequest, match=f"^{MAX_PIECES + 1} pieces is more than {MAX_PIECES}$"
    ):
        PiecePlan("md5", 1, (*hashes, bytes(16)), MAX_PIECES + 1)
    with pytest.raises(InvalidRequest, match=f"^more than {MAX_PIECES} piece hashes$"):
        parse_piece_spec({"algorithm": "md5", "piece_size": 1, "hashes": ["00"] * (MAX_PIECES + 1)})


def test_messages_name_what_is_wrong():
    plan = plan_for(DATA, 1024)
    with pytest.raises(IndexError, match=r"^piece 11 of 11$"):
        plan.piece_range(11)
    with pytest.raises(IndexError, match=r"^offset 10244 outside 10244 bytes$"):
        plan.piece_at(10244)
    with pytest.raises(IndexError, match=r"^piece 12 of 11$"):
        refetch_ranges(plan, [12])
    with pytest.raises(ValueError, match=r"^10245 bytes is past the 10244 planned$"):
        PieceHasher(plan, 10000).feed(bytes(245))
    with pytest.raises(InvalidRequest, match=r"^a piece list must be a mapping, not list$"):
        parse_piece_spec([])
    with pytest.raises(InvalidRequest, match=r"^a piece list has unknown keys \['size'\]$"):
        parse_piece_spec({"algorithm": "md5", "size": 1, "hashes": ["00" * 16]})


def test_a_one_byte_piece_size_is_allowed():
    spec = parse_piece_spec({"algorithm": "md5", "piece_size": 1, "hashes": ["00" * 16]})
    assert spec.piece_size == 1
