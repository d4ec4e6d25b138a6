"""The worker's lease book: the pure decisions (renewal pace, giving up, lost claims,
directories left alone for a while)."""

from __future__ import annotations

from bgtransfer._protocol._leases import AWAY_S, LeaseBook


def test_pace_renewals_give_up_before_the_lease_runs_out() -> None:
    book = LeaseBook(30.0)
    assert book.renew_every == 10.0
    assert book.give_up_after == 20.0  # a third of the lease left as margin
    assert book.sweep_every == 15.0
    assert LeaseBook(0.6).sweep_every == 0.5  # never a busy loop


def test_a_worker_holding_nothing_never_gives_up() -> None:
    book = LeaseBook(3.0)
    assert not book.must_give_up(1e9)
    book.hold("a", 1)
    assert not book.must_give_up(1e9)  # nothing landed yet: the claim itself counts next
    book.renewed(100.0, {}, set())
    assert not book.must_give_up(101.9)
    assert book.must_give_up(102.0)
    book.renewed(99.0, {}, set())  # a late answer to an older renewal moves nothing back
    assert book.last_renewed == 100.0


def test_renewals_report_only_the_claims_still_believed_held() -> None:
    book = LeaseBook(3.0)
    book.hold("a", 1)
    book.hold("b", 4)
    lost = book.renewed(10.0, {"a": 1, "b": 4}, {"a"})
    assert lost == ["b"]
    # Claimed again meanwhile (a new generation): an old answer does not lose the new claim.
    book.hold("b", 5)
    assert book.renewed(10.5, {"b": 4}, set()) == []
    assert book.drop("b", 4) is None  # not that generation
    assert book.drop("b", 5) == 5
    assert book.room(3) == 2
    book.hold("c", 1)
    book.hold("d", 1)
    assert book.room(3) == 0


def test_tasks_left_alone_for_a_while() -> None:
    book = LeaseBook(3.0)
    book.set_away("x", 100.0)
    book.set_away("y", 110.0)
    assert book.staying_away(100.0 + AWAY_S - 1) == ["x", "y"]
    assert book.staying_away(100.0 + AWAY_S) == ["y"]
    book.hold("y", 2)  # claimed here after all (another reason): no longer avoided
    assert book.staying_away(100.0) == []
