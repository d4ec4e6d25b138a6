"""Mirror selection and consistency for one file served by several sources (issue 17)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import Checksum
from bgtransfer._protocol._metalink import MetalinkUrl
from bgtransfer._protocol._mirrors import MirrorEvent, MirrorSet, Observed

A, B, C = "https://a.example/f", "https://b.example/f", "http://c.example/f"
SHA = b"s" * 32


def test_plain_urls_spread_segments_evenly():
    m = MirrorSet([A, B, C], max_per_source=2)
    picks = [m.pick(0.0) for _ in range(6)]
    assert picks == [A, B, C, A, B, C]
    assert m.pick(0.0) is None  # every source at its limit
    m.release(B)
    assert m.pick(0.0) == B
    m.release(A)
    m.release(A)
    m.release(A)  # more releases than picks do not go below zero
    assert m.pick(0.0) == A


def test_metalink_priority_comes_first():
    m = MirrorSet([MetalinkUrl(B, 2), MetalinkUrl(A, 1)], max_per_source=2)
    assert [m.pick(0.0) for _ in range(4)] == [A, A, B, B]


def test_a_failed_source_is_set_aside_then_comes_back():
    m = MirrorSet([A, B], backoff=5.0, max_backoff=60.0)
    assert m.failed(A, 100.0, "connection reset") == 105.0
    assert m.pick(101.0) == B
    m.release(B)
    assert m.pick(101.0) == B  # A is still set aside
    m.release(B)
    # B fails too: nothing usable until A returns
    m.failed(B, 101.0, "HTTP 503")
    assert m.pick(102.0) is None
    assert m.next_ready(102.0) == 105.0
    assert m.next_ready(104.0) == 105.0
    assert m.pick(105.0) == A
    assert m.next_ready(105.0) == 106.0  # B
    assert m.next_ready(106.0) is None  # nothing set aside any more
    # backoff doubles per failure in a row, capped, and a success resets it
    m.release(A)
    assert m.failed(A, 200.0, "again") == 210.0
    assert m.failed(A, 300.0, "again") == 320.0
    for _ in range(5):
        m.failed(A, 400.0, "again")
    assert m.failed(A, 400.0, "again") == 460.0
    m.succeeded(A)
    assert m.failed(A, 500.0, "again") == 505.0
    kinds = [e.kind for e in m.history]
    assert kinds.count("set-aside") == 11
    assert "connection reset (for 5 s)" in m.history[0].reason


def test_retry_after_sets_the_wait_but_never_past_the_cap():
    m = MirrorSet([A], backoff=5.0, max_backoff=60.0)
    assert m.failed(A, 0.0, "429", retry_after=30.0) == 30.0
    assert m.failed(A, 0.0, "429", retry_after=9999.0) == 60.0
    assert m.failed(A, 0.0, "429", retry_after=0.0) == 20.0  # the backoff is the floor


def test_the_source_a_failure_prefers_another():
    m = MirrorSet([A, B], max_per_source=4)
    m.failed(A, 0.0, "slow")
    # once back, the one that failed is picked after the other at equal load
    assert m.pick(10.0) == B


def test_same_length_and_strong_etag_are_accepted():
    m = MirrorSet([A, B])
    assert m.observe(A, Observed(100, '"v1"')) is None
    assert m.observe(B, Observed(100, '"v1"')) is None
    assert m.live == [A, B]
    assert [e.kind for e in m.history] == ["accepted", "accepted"]


def test_a_mirror_with_another_length_is_dropped_with_its_reason():
    m = MirrorSet([A, B, C])
    assert m.observe(A, Observed(100, '"v1"')) is None
    reason = m.observe(B, Observed(99, '"v1"'))
    assert reason == "it serves 99 bytes, not 100"
    assert m.dropped == {B: reason}
    assert m.observe(B, Observed(100, '"v1"')) == reason  # stays dropped
    assert B not in [m.pick(0.0) for _ in range(8)]
    assert m.observe(C, Observed(None)) == "it does not say the length of what it serves"


def test_without_a_checksum_a_different_etag_is_not_trusted():
    m = MirrorSet([A, B, C])
    m.observe(A, Observed(100, '"v1"'))
    reason = m.observe(B, Observed(100, '"other"'))
    assert reason is not None
    assert "no checksum" in reason
    assert m.observe(C, Observed(100, 'W/"v1"')) is not None  # weak proves nothing


def test_without_any_validator_only_the_first_source_is_used():
    m = MirrorSet([A, B])
    assert m.observe(A, Observed(100)) is None
    assert m.observe(B, Observed(100, '"v9"')) is not None
    assert m.live == [A]


def test_with_a_checksum_differing_etags_are_tolerated():
    m = MirrorSet([A, B], checksums=[Checksum("sha256", SHA)])
    assert m.observe(A, Observed(100, '"nginx-1"')) is None
    assert m.observe(B, Observed(100, '"apache-2"')) is None
    m2 = MirrorSet([A, B], has_pieces=True)
    assert m2.observe(A, Observed(100, '"x"')) is None
    assert m2.observe(B, Observed(100, None)) is None


def test_digests_must_agree_with_the_checksum_and_with_each_other():
    m = MirrorSet([A, B, C], checksums=[Checksum("sha256", SHA)], length=100)
    assert m.observe(A, Observed(100, None, {"sha256": SHA, "sha512": b"1" * 64})) is None
    lie = m.observe(B, Observed(100, None, {"sha256": b"x" * 32}))
    assert lie == "its sha256 digest differs from the expected one"
    # the first source's sha512 became part of the reference
    assert m.observe(C, Observed(100, None, {"sha512": b"2" * 64})) is not None
    assert m.live == [A]


def test_a_matching_digest_proves_it_even_without_a_checksum():
    m = MirrorSet([A, B])
    m.observe(A, Observed(100, '"v1"', {"sha256": SHA}))
    assert m.observe(B, Observed(100, '"v2"', {"sha256": SHA})) is None


def test_announced_length_is_the_reference():
    m = MirrorSet([A], length=50)
    assert m.observe(A, Observed(51, '"v"')) == "it serves 51 bytes, not 50"
    assert m.next_ready(0.0) is None  # every source dropped
    assert m.pick(0.0) is None


def test_bad_pieces_drop_a_source_after_the_limit():
    m = MirrorSet([A, B], max_bad_pieces=2)
    assert not m.bad_piece(B, 1.0)
    assert m.bad_piece(B, 2.0)
    assert m.dropped == {B: "2 pieces from it failed their hash"}
    assert m.history[-1].kind == "dropped"
    assert m.history[-1].at == 2.0
    m.drop(B, "another reason")  # dropping twice keeps the first reason
    assert m.dropped[B] == "2 pieces from it failed their hash"


def test_bad_arguments():
    with pytest.raises(InvalidRequest, match="at least one"):
        MirrorSet([])
    with pytest.raises(InvalidRequest, match="twice"):
        MirrorSet([A, A])
    with pytest.raises(InvalidRequest, match="scheme"):
        MirrorSet(["ftp://x/f"])
    with pytest.raises(InvalidRequest, match="positive"):
        MirrorSet([A], max_per_source=0)
    with pytest.raises(KeyError, match="not a source"):
        MirrorSet([A]).release(B)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "release", "fail", "ok", "bad", "observe"]),
        st.integers(min_value=0, max_value=3),
        st.floats(min_value=0, max_value=50),
    ),
    max_size=60,
)


@given(_OPS, st.integers(min_value=1, max_value=3))
@settings(max_examples=200)
def test_invariants_under_any_sequence(ops, per_source):
    urls = [f"https://m{i}.example/f" for i in range(4)]
    m = MirrorSet(urls, max_per_source=per_source, max_bad_pieces=2)
    now = 0.0
    busy: dict[str, int] = dict.fromkeys(urls, 0)
    for op, i, dt in ops:
        now += dt
        url = urls[i]
        if op == "pick":
            got = m.pick(now)
            if got is None:
                ready = m.next_ready(now)
                assert ready is None or ready > now
                continue
            assert got in m.live
            assert got not in m.dropped
            busy[got] += 1
            assert busy[got] <= per_source
        elif op == "release" and busy[url]:
            m.release(url)
            busy[url] -= 1
        elif op == "fail":
            assert m.failed(url, now, "x") > now
            got = m.pick(now)
            assert got != url  # set aside: not picked before its time
            if got is not None:
                busy[got] += 1
                assert busy[got] <= per_source
        elif op == "ok":
            m.succeeded(url)
        elif op == "bad":
            m.bad_piece(url, now)
        elif op == "observe":
            m.observe(url, Observed(100 + (i == 3), '"v"'))
    assert set(m.live) | set(m.dropped) == set(urls)
    assert not set(m.live) & set(m.dropped)


def test_history_records_every_switch_exactly():
    m = MirrorSet([A, B], backoff=2.0)
    m.observe(A, Observed(10, '"v"'), now=1.0)
    m.observe(B, Observed(11, '"v"'), now=2.0)
    m.failed(A, 3.0, "HTTP 503")
    assert m.history == [
        MirrorEvent("accepted", A, "serves the same representation", 1.0),
        MirrorEvent("dropped", B, "it serves 11 bytes, not 10", 2.0),
        MirrorEvent("set-aside", A, "HTTP 503 (for 2 s)", 3.0),
    ]
    m.observe(A, Observed(10, '"v"'), now=4.0)  # accepted once only
    assert len(m.history) == 3


def test_disagreement_reasons_are_exact():
    m = MirrorSet([A, B, C])
    m.observe(A, Observed(10))
    assert m.observe(B, Observed(10, '"x"')) == (
        'its validator ("x") does not prove it serves the same bytes as the first source '
        "(none), and no checksum will check them"
    )
    m2 = MirrorSet([A, B])
    m2.observe(A, Observed(10, '"v"'))
    assert m2.observe(B, Observed(10)) == (
        'its validator (none) does not prove it serves the same bytes as the first source ("v"), '
        "and no checksum will check them"
    )


def test_defaults_and_limits():
    m = MirrorSet([A])
    assert [m.pick(0.0) for _ in range(5)] == [A, A, A, A, None]  # four at a time by default
    assert m.failed(A, 0.0, "x") == 5.0  # five seconds first
    for _ in range(10):
        m.failed(A, 0.0, "x")
    assert m.failed(A, 0.0, "x") == 300.0  # five minutes at most
    assert MirrorSet([A], max_bad_pieces=1).bad_piece(A)
    MirrorSet([A], backoff=1.0, max_backoff=1.0)  # equal bounds are fine
    MirrorSet([A], backoff=0.5)
    for kwargs in (
        {"max_bad_pieces": 0},
        {"backoff": 0.0},
        {"backoff": 10.0, "max_backoff": 9.0},
    ):
        with pytest.raises(InvalidRequest, match=r"^mirror limits must be positive$"):
            MirrorSet([A], **kwargs)
    with pytest.raises(InvalidRequest, match=r"^at least one URL is needed$"):
        MirrorSet([])


def test_release_frees_exactly_one_slot():
    m = MirrorSet([A], max_per_source=2)
    assert m.pick(0.0) == A
    assert m.pick(0.0) == A
    m.release(A)
    assert m.pick(0.0) == A
    assert m.pick(0.0) is None


def test_order_breaks_ties_between_equal_sources():
    m = MirrorSet([C, A, B], max_per_source=1)
    assert [m.pick(0.0) for _ in range(3)] == [C, A, B]
