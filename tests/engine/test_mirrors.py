"""Mirrors (issue 17): one file from several sources (``download(urls=[...])``), against the
real fault server: honest mirrors (``?mirror=i``, the other origin 127.0.0.2), lying ones
(``lie=1``: same length, other bytes and ETag), erroring and slow ones. The server's request
log and the task's attempt history are the witnesses; the result is checked byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, gen_bytes, gen_sha256

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


def gen(server: FaultServer, size: int, key: str, **q: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"seed": "7", "key": key, **q}.items())
    return server.url(f"/gen/{size}?{query}")


def by_query(server: FaultServer, key: str, **want: str) -> list[Any]:
    return [
        r
        for r in server.requests("/gen/")
        if r.query.get("key") == key
        and r.method == "GET"
        and all(r.query.get(k) == v for k, v in want.items())
    ]


def test_urls_needs_exactly_one_of_url_and_urls(
    session: bgtransfer.Session, tmp_path: Path
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="not both"):
        session.download("http://h/a", tmp_path / "x", urls=["http://h/a", "http://h/b"])
    with pytest.raises(bgtransfer.InvalidRequest, match="a URL is needed"):
        session.download(path=tmp_path / "x")
    with pytest.raises(bgtransfer.InvalidRequest, match="twice"):
        session.download(urls=["http://h/a", "http://h/a"], path=tmp_path / "x")
    with pytest.raises(bgtransfer.InvalidRequest, match="non-empty list"):
        session.download(urls="http://h/a", path=tmp_path / "x")


def test_a_lying_mirror_is_dropped_and_never_mixes_bytes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 2 << 20
    honest = gen(server, size, key)
    liar = gen(server, size, key, lie="1")
    dest = tmp_path / "f.bin"
    # The honest source answers first (the reference), then is cut mid-body: the resume
    # goes to the liar, whose other ETag gets it dropped before a byte of it is written.
    first = gen(server, size, key, cut="600000", times="1")
    task = session.download(urls=[first, liar, honest], path=dest, **FAST).wait(timeout=60)
    assert task.state is TaskState.COMPLETED
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(size, 7)
    history = task.history()
    dropped = [a for a in history if "dropped" in a["outcome"] and "lie=1" in a["url"]]
    assert dropped, [a["outcome"] for a in history]
    # Downloads ask for Repr-Digest (issue 17, integrity): the liar's own digest gives it
    # away first; without one, its validator does.
    reason = dropped[0]["outcome"]
    assert "validator" in reason or "sha256 digest differs" in reason, reason
    # The liar's bytes were never written: no attempt from it carried bytes.
    assert all(a["bytes"] == 0 for a in history if "lie=1" in a["url"])


def test_an_erroring_mirror_is_set_aside_and_another_serves(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 1 << 20
    broken = gen(server, size, key, status="503", mirror="1")
    good = gen(server, size, key, mirror="2")
    dest = tmp_path / "f.bin"
    task = session.download(urls=[broken, good], path=dest, **FAST).wait(timeout=60)
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(size, 7)
    assert len(by_query(server, key, mirror="1")) == 1  # set aside, not hammered
    outcomes = [a["outcome"] for a in task.history()]
    assert any("mirror set-aside: it answered 503" in o for o in outcomes), outcomes


def test_a_slow_mirror_is_set_aside(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 1 << 20
    slow = gen(server, size, key, rate="20000", mirror="1")
    fast = gen(server, size, key, mirror="2")
    dest = tmp_path / "f.bin"
    task = session.download(
        urls=[slow, fast], path=dest, low_speed_limit=100_000, low_speed_time=0.5, **FAST
    ).wait(timeout=60)
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(size, 7)
    outcomes = [a["outcome"] for a in task.history()]
    assert any("set-aside" in o for o in outcomes), outcomes
    fast_reqs = by_query(server, key, mirror="2")
    assert fast_reqs
    assert fast_reqs[0].headers.get("range", "").startswith("bytes=")  # bytes kept


def test_segments_spread_over_three_mirrors(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    urls = [gen(server, size, key, mirror=str(i)) for i in (1, 2, 3)]
    dest = tmp_path / "f.bin"
    task = session.download(urls=urls, path=dest, segments=4, **FAST).wait(timeout=60)
    assert task.error is None, task.error
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == gen_sha256(size, 7)
    for i in (1, 2, 3):
        assert by_query(server, key, mirror=str(i)), f"mirror {i} got no request"
    served = {str(i): 0 for i in (1, 2, 3)}
    for a in task.history():
        for mirror in served:
            if f"mirror={mirror}" in a["url"]:
                served[mirror] += a["bytes"]
    assert all(n > 0 for n in served.values()), served
    assert sum(served.values()) == size


def test_segments_drop_a_lying_mirror(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    urls = [gen(server, size, key, mirror="1"), gen(server, size, key, mirror="2", lie="1")]
    dest = tmp_path / "f.bin"
    task = session.download(urls=urls, path=dest, segments=4, **FAST).wait(timeout=60)
    assert task.error is None, task.error
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == gen_sha256(size, 7)
    history = task.history()
    assert any("mirror dropped" in a["outcome"] for a in history), history
    assert all(a["bytes"] == 0 for a in history if "lie=1" in a["url"])


def test_with_a_checksum_mirrors_of_other_etags_complete_each_other(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Mirrors on different servers rarely share ETags: with the caller's sha256 a mirror
    of the same length is trusted (the sha256 judges the file) and its 206 continues the
    bytes of the first."""
    size = 2 << 20
    first = gen(server, size, key, cut="700000", times="1")
    other = server.other_base_url
    assert other is not None
    # Same bytes on another origin, but under its own ETag (weak_etag gives another tag).
    second = f"{other}/gen/{size}?seed=7&key={key}&mirror=2&weak_etag=1"
    dest = tmp_path / "f.bin"
    task = session.download(
        urls=[first, second], path=dest, sha256=gen_sha256(size, 7), **FAST
    ).wait(timeout=60)
    assert task.error is None, task.error
    assert dest.read_bytes() == gen_bytes(size, 7)
    resumed = by_query(server, key, mirror="2")
    assert resumed
    assert resumed[0].headers.get("range") == "bytes=700000-"
    assert "if-range" not in resumed[0].headers
