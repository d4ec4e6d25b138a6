"""Downloads from nginx and Apache httpd serving static files: ranges and validators as
real servers implement them, each check asserted from the file and the server's own log.

Every test runs against both servers (the ``static`` fixture). A connection is cut by a
relay in the test (``CutProxy``) at a chosen byte, and the world may change while the
client is cut off; a daemon is SIGKILLed mid-body; a download is suspended, the file
replaced, and resumed. What the server answered decides each assertion, never only our
own task's word.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing._thirdparty import CutProxy, LogLine, StaticServer
from tests.daemon.conftest import kill_daemon

from .conftest import FAST, committed

MiB = 1 << 20
# Whole seconds in the past: a Last-Modified at least 1 s older than the Date is strong
# enough for If-Range (RFC 9110 §13.1.5), and Apache compares If-Range dates to its
# microsecond mtime (see test_apache_if_range_date_never_matches_a_subsecond_mtime).
OLD = float(int(time.time()) - 3600)


def publish(srv: StaticServer, name: str, size: int, *, mtime: float = OLD) -> bytes:
    data = os.urandom(size)
    srv.put(name, data, mtime=mtime)
    return data


def gets(srv: StaticServer, path: str, count: int) -> list[LogLine]:
    """The GETs of ``path`` once ``count`` of them are logged (a cut request is logged when
    the server notices the cut, which may be after the client has gone on)."""
    lines = srv.wait_log(lambda ls: sum(x.method == "GET" for x in ls) >= count, path)
    got = [x for x in lines if x.method == "GET"]
    assert all("," not in x.range for x in got), "a multi-range request was sent"
    return got


def session(tmp_path: Path) -> bgtransfer.Session:
    return bgtransfer.Session("interop", home=tmp_path / "home", background=False)


# -- one connection ----------------------------------------------------------------------------


def test_a_cut_download_resumes_under_if_range_with_the_strong_etag(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    name = f"cut-{key}.bin"
    data = publish(static, name, 4 * MiB)
    etag = static.probe(name)["etag"]
    assert etag.startswith('"'), etag  # both send a strong ETag for a plain file
    with CutProxy(static.port, after=MiB) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(f"/{name}"), tmp_path / "f.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    first, second = gets(static, f"/{name}", 2)
    assert (first.range, first.status) == ("", 200)
    start = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= MiB
    assert second.range == f"bytes={start}-"
    assert second.if_range == etag
    assert second.status == 206
    assert second.bytes == 4 * MiB - start  # only the rest was sent
    assert t.restarts == 0


def test_a_file_replaced_during_the_cut_is_downloaded_again_whole(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    name = f"swap-{key}.bin"
    publish(static, name, 4 * MiB)
    old_etag = static.probe(name)["etag"]
    v2 = os.urandom(4 * MiB)  # the same size: only the mtime tells the versions apart

    def replace() -> None:
        static.put(name, v2, mtime=OLD + 60)

    with CutProxy(static.port, after=MiB, on_cut=replace) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(f"/{name}"), tmp_path / "f.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == v2  # never v1's head with v2's tail
    _, second = gets(static, f"/{name}", 2)
    assert second.if_range == old_etag
    assert second.etag != old_etag
    assert second.status == 200  # the server itself said "another version": whole
    assert t.restarts == 1


@pytest.mark.parametrize("replaced", [False, True])
def test_last_modified_alone_goes_in_if_range(
    static: StaticServer, tmp_path: Path, key: str, replaced: bool
) -> None:
    """No ETag (nginx ``etag off``, Apache ``FileETag None``): the Last-Modified date, older
    than the response's Date by more than 1 s, is the validator."""
    name = f"lm-{key}.bin"
    v1 = publish(static, name, 4 * MiB)
    v2 = os.urandom(4 * MiB)
    lm = static.probe(name, where="noetag")["last-modified"]

    def replace() -> None:
        if replaced:
            static.put(name, v2, mtime=OLD + 60)

    url = f"/noetag/{name}"
    with CutProxy(static.port, after=MiB, on_cut=replace) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "f.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == (v2 if replaced else v1)
    _, second = gets(static, url, 2)
    assert second.etag == ""
    assert second.if_range == lm
    assert second.status == (200 if replaced else 206)
    assert t.restarts == (1 if replaced else 0)


def test_a_file_that_shrank_under_the_same_date_answers_416_and_restarts(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    """A server whose only validator did not change (the new file kept the old mtime):
    If-Range matches, the range starts past the new end, the server answers 416 with
    ``bytes */<new size>``, and the download starts again rather than keep a stale head."""
    name = f"shrink-{key}.bin"
    publish(static, name, 4 * MiB)
    v2 = os.urandom(MiB)
    url = static.url(name, where="noetag")
    with session(tmp_path) as s:
        t = s.download(url, tmp_path / "f.bin", max_rate=2 * MiB, **FAST)
        deadline = time.monotonic() + 30
        while t.bytes_received < 2 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        t.suspend()
        assert t.state is TaskState.SUSPENDED
        static.put(name, v2, mtime=OLD)  # shorter than what we hold, same Last-Modified
        t.resume()
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == v2
    lines = gets(static, f"/noetag/{name}", 3)
    assert [x.status for x in lines] == [200, 416, 200]
    assert lines[1].range.startswith("bytes=")
    assert int(lines[1].range[6:-1]) >= MiB
    assert lines[1].if_range != ""
    assert lines[2].range == ""


def test_a_missing_file_fails_at_once_with_404(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    name = f"nope-{key}.bin"
    with session(tmp_path) as s:
        t = s.download(static.url(name), tmp_path / "f.bin", **FAST).wait(timeout=30)
    assert isinstance(t.error, bgtransfer.HTTPStatusError)
    assert t.error.status_code == 404
    assert not (tmp_path / "f.bin").exists()
    assert [x.status for x in gets(static, f"/{name}", 1)] == [404]  # not retried


# -- segments ----------------------------------------------------------------------------------


def test_a_segmented_download_is_byte_exact(static: StaticServer, tmp_path: Path, key: str) -> None:
    name = f"seg-{key}.bin"
    data = publish(static, name, 8 * MiB)
    etag = static.probe(name)["etag"]
    with session(tmp_path) as s:
        t = s.download(static.url(name), tmp_path / "f.bin", segments=4, **FAST)
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    lines = gets(static, f"/{name}", 4)
    ranged = [x for x in lines if x.range]
    assert len(ranged) >= 3  # the other three segments, each on its own connection
    for x in ranged:
        first, _, last = x.range.removeprefix("bytes=").partition("-")
        assert last, x.range  # a closed range: bytes=pos-(end-1)
        assert x.status == 206
        assert x.if_range == etag
        assert x.bytes <= int(last) - int(first) + 1


def test_a_segmented_download_of_a_file_replaced_mid_way_is_one_version(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    name = f"segswap-{key}.bin"
    publish(static, name, 8 * MiB)
    v2 = os.urandom(8 * MiB)

    def replace() -> None:
        static.put(name, v2, mtime=OLD + 60)

    # The first connection (segment 0) is cut at 1 MiB; the file changes meanwhile.
    with CutProxy(static.port, after=MiB, on_cut=replace) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(f"/{name}"), tmp_path / "f.bin", segments=4, **FAST)
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == v2
    assert t.restarts >= 1


def test_a_server_that_serves_no_ranges_gets_one_connection_and_a_clean_restart(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    """``/noranges/`` (nginx ``max_ranges 0``: no Accept-Ranges; Apache ``MaxRanges none``:
    ``Accept-Ranges: none``): segments are declined, and the resume after a cut, answered
    200 whole, starts the file again."""
    name = f"noranges-{key}.bin"
    data = publish(static, name, 4 * MiB)
    assert static.probe(name, where="noranges").get("accept-ranges", "none") == "none"
    url = f"/noranges/{name}"
    with CutProxy(static.port, after=MiB) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "f.bin", segments=4, **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    first, second = gets(static, url, 2)
    assert first.range == ""  # one connection: no segment was asked for
    assert second.range.startswith("bytes=")
    assert second.status == 200
    assert t.restarts == 1


# -- compression -------------------------------------------------------------------------------


def test_compression_is_never_applied_to_what_is_downloaded(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    """``/gz/`` compresses every type for a client that accepts gzip (then nginx's ETag is
    weak, Apache's gets "-gzip"); bgtransfer asks for identity, so its ranges are ranges of
    the file itself, under the file's own strong ETag."""
    name = f"gz-{key}.txt"
    data = b"".join(b"line %08d of a very compressible text file\n" % i for i in range(80000))
    static.put(name, data, mtime=OLD)
    zipped = static.probe(name, where="gz", method="GET", Accept_Encoding="gzip")
    assert zipped.get("content-encoding") == "gzip"  # the location does compress
    plain_etag = static.probe(name)["etag"]
    if static.name == "nginx":
        assert zipped["etag"] == "W/" + plain_etag  # weak: no If-Range may carry it
    else:
        assert zipped["etag"] == plain_etag[:-1] + '-gzip"'  # strong-looking, its own
    url = f"/gz/{name}"
    with CutProxy(static.port, after=256 << 10) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "f.txt", segments=4, **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.txt").read_bytes() == data
    lines = [x for x in gets(static, url, 3) if x.accept_encoding != "gzip"]
    assert lines
    assert all(x.accept_encoding == "identity" for x in lines)
    assert all(x.content_encoding == "" for x in lines)
    assert all(x.etag == plain_etag for x in lines)
    assert any(x.status == 206 and x.if_range == plain_etag for x in lines)


# -- a daemon SIGKILLed mid-body -----------------------------------------------------------


def test_a_download_resumes_with_if_range_after_a_daemon_sigkill(
    static: StaticServer, home: Path, tmp_path: Path, key: str
) -> None:
    name = f"kill-{key}.bin"
    data = publish(static, name, 5 * MiB)
    etag = static.probe(name)["etag"]
    with bgtransfer.Session("interop", home=home) as s:
        t = s.download(static.url(name), tmp_path / "f.bin", max_rate=2 * MiB, **FAST)
        deadline = time.monotonic() + 30
        # Past a checkpoint (once a second, committed by the writer thread): the offset
        # the restarted daemon finds in its store is > 0.
        while committed(home, t.id) < MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kill_daemon(home, signal.SIGKILL) is not None
        t.wait(timeout=60)  # starts the daemon again; it finds the task and resumes it
        assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    lines = gets(static, f"/{name}", 2)
    resumed = [x for x in lines if x.range]
    assert resumed, lines
    assert resumed[0].if_range == etag
    assert resumed[0].status == 206
    assert int(resumed[0].range[6:-1]) > 0


# -- a Last-Modified under a minute old --------------------------------------------------------


def test_a_fresh_last_modified_resumes_on_both_servers(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    """A file without ETag modified seconds ago: the date is strong by RFC 9110 (1 s), so a
    resume sends it in If-Range. nginx answers 206; Apache httpd answers 200 to a date under
    60 s old (ap_condition_if_range), so the download starts again: bytes wasted, never a
    mixed file."""
    name = f"fresh-{key}.bin"
    data = publish(static, name, 4 * MiB, mtime=time.time() - 5)
    url = f"/noetag/{name}"
    with CutProxy(static.port, after=MiB) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "f.bin", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    _, second = gets(static, url, 2)
    assert second.if_range != ""
    apache = static.name == "apache"
    assert second.status == (200 if apache else 206)
    assert t.restarts == (1 if apache else 0)


def test_a_segmented_download_of_a_fresh_last_modified_completes(
    static: StaticServer, tmp_path: Path, key: str
) -> None:
    """Segments of such a file carry no If-Range (Apache's 200 to each would restart the
    file until the task failed: "resource keeps changing"); each 206's own Last-Modified is
    checked instead, so a file replaced meanwhile still restarts cleanly."""
    name = f"freshseg-{key}.bin"
    data = publish(static, name, 8 * MiB, mtime=time.time() - 5)
    url = f"/noetag/{name}"
    with session(tmp_path) as s:
        t = s.download(static.url(name, where="noetag"), tmp_path / "f.bin", segments=4, **FAST)
        t.wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == data
    assert t.restarts == 0
    ranged = [x for x in gets(static, url, 4) if x.range]
    assert len(ranged) >= 3
    assert all(x.status == 206 and x.if_range == "" for x in ranged)

    v2 = os.urandom(8 * MiB)

    def replace() -> None:
        static.put(name, v2, mtime=time.time() - 2)

    with CutProxy(static.port, after=MiB, on_cut=replace) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "g.bin", segments=4, **FAST).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "g.bin").read_bytes() == v2


# -- server-specific ---------------------------------------------------------------------------


def test_apache_forced_gzip_is_saved_as_sent_and_resumed_on_the_gzip_bytes(
    apache: StaticServer, tmp_path: Path, key: str
) -> None:
    """``force-gzip``: Apache compresses although we ask for identity, under an ETag with
    "-gzip", and streams it (no length), so it answers a Range with the whole stream again
    (200) even when If-Range matches. bgtransfer keeps what was sent, as curl does without
    --compressed, and takes the 200 as a restart: the file is one whole gzip stream."""
    import gzip

    name = f"forced-{key}.txt"
    text = b"".join(b"row %08d, compressible whatever the client says\n" % i for i in range(200000))
    apache.put(name, text, mtime=OLD)
    sent = apache.probe(name, where="forcegz", method="GET", Accept_Encoding="identity")
    assert sent.get("content-encoding") == "gzip"
    assert sent["etag"].endswith('-gzip"')
    url = f"/forcegz/{name}"
    with CutProxy(apache.port, after=64 << 10) as proxy, session(tmp_path) as s:
        t = s.download(proxy.url(url), tmp_path / "f.gz", **FAST).wait(timeout=60)
    assert t.error is None, t.error
    got = (tmp_path / "f.gz").read_bytes()
    assert gzip.decompress(got) == text
    lines = [x for x in gets(apache, url, 3) if x.accept_encoding == "identity" and x.range]
    assert len(lines) == 1
    assert lines[0].if_range == sent["etag"]
    assert lines[0].status == 200
    assert t.restarts == 1


def test_nginx_over_https_with_a_private_ca(nginx: StaticServer, tmp_path: Path, key: str) -> None:
    """HTTPS verified against the CA the test made (``ca_bundle=``), resumed after a cut
    through a relay that knows nothing of TLS; without the bundle the task fails at once."""
    pki = nginx.pki
    assert pki is not None
    name = f"tls-{key}.bin"
    data = publish(nginx, name, 4 * MiB)
    with CutProxy(nginx.tls_port, after=MiB) as proxy, session(tmp_path) as s:
        url = proxy.url(f"/{name}", tls=True)
        t = s.download(url, tmp_path / "f.bin", ca_bundle=str(pki.ca), **FAST).wait(timeout=60)
        assert t.error is None, t.error
        bare = s.download(url, tmp_path / "g.bin", **FAST).wait(timeout=30)
    assert (tmp_path / "f.bin").read_bytes() == data
    _, second = gets(nginx, f"/{name}", 2)
    assert second.status == 206
    assert second.if_range.startswith('"')
    assert isinstance(bare.error, bgtransfer.TLSError)
    assert len(gets(nginx, f"/{name}", 2)) == 2  # the unverified one never sent a request
    assert not (tmp_path / "g.bin").exists()
