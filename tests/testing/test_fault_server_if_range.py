"""The fault server's ignore_if_range knob and its concurrency gauge (issue 11 tests use them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tests.testing.test_fault_server import request

from bgtransfer.testing import FaultServer, gen_bytes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def test_ignore_if_range_answers_206_of_the_current_version(srv: FaultServer) -> None:
    old = {"Range": "bytes=100-199", "If-Range": '"an-older-version"'}
    honoured = request(srv, "/gen/5000", old)
    assert honoured.status == 200  # a compliant server: the whole new version
    ignored = request(srv, "/gen/5000?ignore_if_range=1", old)
    assert ignored.status == 206  # as S3 does
    assert ignored.headers["content-range"] == "bytes 100-199/5000"
    assert ignored.headers["etag"] == '"gen-5000-0-v0"'  # its own version's validator
    assert ignored.body == gen_bytes(5000)[100:200]
    srv.add("doc", b"0123456789")
    srv.replace("doc", b"abcdefghij")
    by_date = request(
        srv, "/r/doc?ignore_if_range=1", {"Range": "bytes=5-", "If-Range": "an old date"}
    )
    assert by_date.status == 206
    assert by_date.body == b"fghij"


def test_peak_concurrency_counts_responses_sent_at_once(srv: FaultServer) -> None:
    assert srv.peak_concurrency() == 0
    request(srv, "/gen/1000")
    assert srv.peak_concurrency(reset=True) == 1
    results: list[int] = []

    def slow() -> None:
        results.append(request(srv, "/gen/20000?rate=40000").status)

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [200, 200, 200]
    assert srv.peak_concurrency() == 3
    request(srv, "/echo")  # not a resource: not counted
    assert srv.peak_concurrency(reset=True) == 3
    assert srv.peak_concurrency() == 0
