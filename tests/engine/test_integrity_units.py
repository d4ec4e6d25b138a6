"""Small pure helpers of the engine's integrity checks."""

from __future__ import annotations

from bgtransfer._engine._verify import contiguous, want_headers


def test_contiguous_reach_of_segments() -> None:
    assert contiguous([]) == 0
    assert contiguous([(0, 10, 10), (10, 15, 20)]) == 15
    assert contiguous([(10, 20, 20), (0, 5, 10)]) == 5  # a hole at 5..10
    assert contiguous([(0, 10, 10), (10, 20, 20), (20, 30, 30)]) == 30


def test_want_headers() -> None:
    assert [k for k, _ in want_headers([], ranged=False)] == ["Want-Repr-Digest"]
    assert [k for k, _ in want_headers([], ranged=True)] == [
        "Want-Repr-Digest",
        "Want-Content-Digest",
    ]
    mine = [("want-repr-digest", "sha-512=10")]
    assert [k for k, _ in want_headers(mine, ranged=True)] == ["Want-Content-Digest"]
