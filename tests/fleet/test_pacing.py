"""Cool-downs and bandwidth caps hold fleet-wide: a 429 with Retry-After heard by one worker
stops every worker's requests to that origin until then; a `bgtransfer limit` caps the
fleet's total, shared out among the workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._fleet._pace import share, shares
from bgtransfer._protocol._origin import origin_key
from bgtransfer._store._postgres import PostgresStore, QueueListener
from bgtransfer._storeclient._limits import limits
from bgtransfer._tasks import build_row
from bgtransfer.cli import main
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import Fleet, eventually, rows_for
from tests.fleet.pace import one, running

T0 = 1_000_000.0


def test_a_cool_down_keeps_the_later_time_and_no_worker_claims_its_origin(
    pg: PostgresStore, pg_url: str, tmp_path: Path
) -> None:
    a = [build_row("s", f"http://a.test/{i}", tmp_path / f"a{i}", background=True)
         for i in range(2)]  # fmt: skip
    b = build_row("s", "http://b.test/x", tmp_path / "b", background=True)
    pg.insert_many([*a, b])
    listener = QueueListener(pg_url)
    try:
        listener.wait(0.05)  # the inserts' own notifications
        pg.save_cooldown("http://a.test:80", T0 + 30, "429", now=T0)
        assert "bgtransfer_cooldown" in listener.wait(2.0)  # every worker hears of it
        pg.save_cooldown("http://a.test:80", T0 + 10, "503", now=T0 + 1)  # shorter: kept
        assert pg.cooldowns(T0 + 2) == [("http://a.test:80", T0 + 30, "429")]
        pg.save_cooldown("http://a.test:80", T0 + 40, "503", now=T0 + 2)  # longer: wins
        assert pg.cooldowns(T0 + 2) == [("http://a.test:80", T0 + 40, "503")]
    finally:
        listener.close()
    got = pg.claim("w1", 300.0, limit=10, now=T0 + 5, max_per_origin=6)
    assert [c.row.id for c in got] == [b.id]  # a.test asked to wait
    assert pg.claim("w2", 30.0, limit=10, now=T0 + 39) == []
    later = pg.claim("w2", 30.0, limit=10, now=T0 + 41)
    assert sorted(c.row.id for c in later) == sorted(r.id for r in a)


def test_the_store_spells_origins_as_the_engine_does(pg: PostgresStore, tmp_path: Path) -> None:
    """The claim skips tasks.origin IN cooldowns.origin: both must be one spelling."""
    urls = ["http://Example.COM/a?x=1", "https://h.test/b", "http://[::1]:8080/c",
            "http://u:p@h.test:80/d"]  # fmt: skip
    rows = [build_row("s", u, tmp_path / f"f{i}", background=True) for i, u in enumerate(urls)]
    pg.insert_many(rows)
    for url in urls[:-1]:
        pg.save_cooldown(origin_key(url), T0 + 60, "429", now=T0)
    (only,) = pg.claim("w", 30.0, limit=10, now=T0)
    assert only.row.id == rows[-1].id  # the only origin not cooling down
    for row, url in zip(rows, urls, strict=True):
        (origin,) = one(pg, "SELECT origin FROM tasks WHERE id=?", row.id)
        assert origin == origin_key(url)


def test_limits_on_the_store_are_checked_and_spelled_as_origins(pg: PostgresStore) -> None:
    got = limits(pg, "POST", {"origin": "http://Example.COM/x", "rate": 5000})
    assert got == {"global": None, "origins": {"http://example.com:80": 5000}, "cooling": {}}
    for bad in ({}, {"rate": 5}, {"global": -1}, {"origin": "ftp://h/x", "rate": 5}, [1]):
        with pytest.raises(InvalidRequest):
            limits(pg, "POST", bad)
    with pytest.raises(InvalidRequest):
        limits(pg, "DELETE", None)
    assert limits(pg, "POST", {"origin": "http://example.com", "rate": None})["origins"] == {}


def test_caps_are_shared_by_the_live_leases_of_each_worker_and_origin(
    pg: PostgresStore, tmp_path: Path
) -> None:
    rows = [build_row("s", f"http://{h}.test/{i}", tmp_path / f"{h}{i}", background=True)
            for h in ("a", "b") for i in range(3)]  # fmt: skip
    pg.insert_many(rows)
    pg.claim("w1", 10.0, limit=4, now=T0)  # a0 a1 a2 b0
    pg.claim("w2", 30.0, limit=1, now=T0)  # b1
    pg.set_limit(None, 1000)
    pg.set_limit("http://b.test:80", 300)
    cool, caps, counts = pg.pace_facts(now=T0 + 1)
    assert cool == []
    assert caps == (1000, {"http://b.test:80": 300})
    assert counts == {("w1", "http://a.test:80"): 3, ("w1", "http://b.test:80"): 1,
                      ("w2", "http://b.test:80"): 1}  # fmt: skip
    assert shares(caps, counts, "w1") == (800, {"http://b.test:80": 150})
    assert shares(caps, counts, "w2") == (200, {"http://b.test:80": 150})
    # w1's leases ran out: w2 holds every live task, so all of each cap.
    _, _, later = pg.pace_facts(now=T0 + 20)
    assert shares(caps, later, "w2") == (1000, {"http://b.test:80": 300})


def test_shares_of_a_cap_follow_the_live_tasks() -> None:
    assert share(900, 1, 3) == 300
    assert share(900, 2, 3) == 600
    assert share(900, 0, 3) == 225  # none held: what one more task would get
    counts: dict[tuple[str, str | None], int] = {
        ("w1", "http://a:80"): 2,
        ("w1", "http://b:80"): 1,
        ("w2", "http://a:80"): 1,
    }
    assert shares((800, {"http://a:80": 300}), counts, "w1") == (600, {"http://a:80": 200})
    assert shares((800, {"http://a:80": 300}), counts, "w2") == (200, {"http://a:80": 100})
    assert shares((None, {}), counts, "w1") == (None, {})


def test_a_429_heard_by_one_worker_stops_every_workers_requests_to_that_origin(
    fleet: Fleet,
    pg: PostgresStore,
    pg_url: str,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wait_s = 4
    fleet.start("w1", max_active=2)
    fleet.start("w2", max_active=2)
    running(fleet, "w1", "w2")
    data = [os.urandom(20_000) for _ in range(16)]
    urls = [server.add(f"cd-{key}-{i}", d) + "?stall_headers=0.25" for i, d in enumerate(data)]
    urls[4] = server.add(f"cd-{key}-4", data[4]) + f"?status=429&retry_after={wait_s}&times=1"
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    pg.insert_many(rows)

    def told() -> list[float]:
        return [q.time for q in server.requests(f"/r/cd-{key}-4") if "status" in q.query][:1]

    eventually(lambda: bool(told()), 20, "the 429 answered")
    t429 = told()[0]
    time.sleep(max(0.0, t429 + 0.3 - time.monotonic()))
    assert main(["--home", str(tmp_path / "h"), "--store", pg_url, "limit", "--json"]) == 0
    cooling = json.loads(capsys.readouterr().out)["cooling"]
    assert list(cooling) == [origin_key(urls[0])]  # `limit` says until when, fleet-wide
    assert time.time() + wait_s - 1 < cooling[origin_key(urls[0])] < time.time() + wait_s + 1
    details = set()
    while time.monotonic() < t429 + wait_s - 0.5:  # bounded: a few seconds
        got = pg.get(rows[4].id)
        assert got is not None
        details.add(got.snap.detail)
        time.sleep(0.2)
    fleet.wait_done(pg, [r.id for r in rows], 40)
    for r, d in zip(rows, data, strict=True):
        assert Path(r.path).read_bytes() == d
    # Every worker learnt it at once: after a short grace (the NOTIFY's way), no request
    # to the origin until the Retry-After is over, from either worker.
    quiet = [q.time - t429 for q in server.requests(f"/r/cd-{key}-")
             if t429 + 0.7 < q.time < t429 + wait_s - 0.2]  # fmt: skip
    assert quiet == []
    after = [q for q in server.requests(f"/r/cd-{key}-") if q.time > t429]
    assert len(after) >= 10  # the rest of the queue ran after the wait
    assert f"retrying in {wait_s:.1f} s after 429" in details  # the task that heard it
    assert {n for n in ("w1", "w2") if "claimed" in fleet.log(n)} == {"w1", "w2"}


def test_a_global_cap_is_the_fleets_total_and_limit_reaches_it(
    fleet: Fleet,
    pg: PostgresStore,
    pg_url: str,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cap = 400 << 10  # 400K
    fleet.start("w1", max_active=2)
    fleet.start("w2", max_active=2)
    running(fleet, "w1", "w2")  # they start uncapped: the cap reaches them while they run
    code = main(["--home", str(tmp_path / "h"), "--store", pg_url, "limit", "--global", "400K",
                 "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["global"] == cap
    assert pg.limits() == (cap, {})
    size, n = 600_000, 4
    data = [os.urandom(size) for _ in range(n)]
    urls = [server.add(f"bw-{key}-{i}", d) for i, d in enumerate(data)]
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for(urls, out)
    pg.insert_many(rows)
    fleet.wait_done(pg, [r.id for r in rows], 40)
    end = time.monotonic()
    start = min(q.time for q in server.requests(f"/r/bw-{key}-"))
    for r, d in zip(rows, data, strict=True):
        assert Path(r.path).read_bytes() == d
    assert {w for w in ("w1", "w2") if "claimed" in fleet.log(w)} == {"w1", "w2"}
    # Each worker alone may go at the whole cap: two at once would be twice as fast. The
    # shares keep the sum at the cap (slack: the buckets' bursts, one re-balance).
    rate = size * n / (end - start)
    assert rate <= cap * 1.4, rate
    # Lifted fleet-wide, through the same command.
    assert main(["--home", str(tmp_path / "h"), "--store", pg_url, "limit", "--global",
                 "off"]) == 0  # fmt: skip
    assert pg.limits() == (None, {})


def test_a_queued_task_no_worker_holds_says_its_origin_asked_to_wait(
    pg: PostgresStore, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cooling = build_row("s", "http://a.test/x", tmp_path / "a", background=True)
    other = build_row("s", "http://b.test/x", tmp_path / "b", background=True)
    pg.insert_many([cooling, other])
    until = time.time() + 6  # room for a slow start of the commands below
    pg.save_cooldown(origin_key(cooling.spec.url), until, "429", now=time.time())
    home = str(tmp_path / "h")
    assert main(["--home", home, "--store", pg_url, "ls", "--json"]) == 0
    details = {t["id"]: t["detail"] for t in json.loads(capsys.readouterr().out)}
    at = time.strftime("%H:%M:%S", time.localtime(until))
    assert details[cooling.id] == f"origin asked to wait until {at} (429 from http://a.test:80)"
    assert "asked to wait" not in details[other.id]
    assert main(["--home", home, "--store", pg_url, "show", cooling.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detail"] == details[cooling.id]
    time.sleep(max(0.0, until - time.time()) + 0.2)  # the cool-down is over
    assert main(["--home", home, "--store", pg_url, "show", cooling.id, "--json"]) == 0
    assert "asked to wait" not in json.loads(capsys.readouterr().out)["detail"]


def test_an_origin_cap_is_the_fleets_total_for_that_origin_only(
    fleet: Fleet,
    pg: PostgresStore,
    pg_url: str,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = server.other_base_url
    assert other is not None  # the session's server also listens on 127.0.0.2
    cap = 400 << 10
    home = str(tmp_path / "h")
    assert main(["--home", home, "--store", pg_url, "limit", "--origin", server.base_url,
                 "400K"]) == 0  # fmt: skip
    capsys.readouterr()
    assert pg.limits() == (None, {origin_key(server.base_url): cap})
    # Four places each for eight tasks, the queue alternating the origins: each worker
    # holds two capped and two free tasks at once, so only a fleet-wide share keeps the
    # capped total down, and the free ones are never queued behind the capped.
    fleet.start("w1", max_active=4)
    fleet.start("w2", max_active=4)
    running(fleet, "w1", "w2")
    size, n = 600_000, 4
    data = [os.urandom(size) for _ in range(n)]
    capped = [server.add(f"oc-{key}-{i}", d) for i, d in enumerate(data)]
    free = [f"{other}/r/oc-{key}-{i}" for i in range(n)]  # the same bytes, another origin
    out = tmp_path / "out"
    out.mkdir()
    rows = rows_for([u for pair in zip(capped, free, strict=True) for u in pair], out)
    capped_rows, free_rows = rows[0::2], rows[1::2]
    pg.insert_many(rows)
    t0 = time.monotonic()
    fleet.wait_done(pg, [r.id for r in free_rows], 40)
    free_s = time.monotonic() - t0
    fleet.wait_done(pg, [r.id for r in capped_rows], 40)
    end = time.monotonic()
    for i, d in enumerate(data):
        assert Path(capped_rows[i].path).read_bytes() == d
        assert Path(free_rows[i].path).read_bytes() == d
    mine = [q for q in server.requests(f"/r/oc-{key}-") if q.host == "127.0.0.1"]
    start = min(q.time for q in mine)
    held = {w for w in ("w1", "w2") for r in capped_rows if f"task {r.id}: claimed" in fleet.log(w)}
    assert held == {"w1", "w2"}  # both ran capped tasks
    # The capped origin's total across both workers stays at the cap (slack: the buckets'
    # bursts, one re-balance); the other origin is not held to it.
    assert size * n / (end - start) <= cap * 1.4
    assert size * n / free_s > cap * 1.5
