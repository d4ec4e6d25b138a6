"""Issue 17, integrity: RFC 9530 digests, cloud-storage checksums, the caller's checksums=
and piece lists, checked against the real fault-injecting server (foreground sessions)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer.testing import FIXED_LAST_MODIFIED, FaultServer, gen_bytes, gen_sha256

SIZE = 3 << 20


def fetch(session: bgtransfer.Session, url: str, dest: Path, **kw: object) -> bgtransfer.Task:
    t = session.download(url, dest, **kw)  # type: ignore[arg-type]
    t.wait(timeout=60)
    return t


def mine(server: FaultServer, key: str) -> list[dict[str, object]]:
    return [
        {"range": r.range, "headers": r.headers}
        for r in server.requests("/")
        if r.query.get("key") == key
    ]


def only_target(dest: Path) -> None:
    """No partial file is left beside the target (the bad bytes were discarded)."""
    assert [p for p in os.listdir(dest.parent) if p.endswith(".bgtransfer-part")] == []


# -- RFC 9530 -------------------------------------------------------------------------------


def test_downloads_ask_for_digests(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    t = fetch(session, server.url(f"/gen/{SIZE}?key={key}"), tmp_path / "a.bin", segments=2)
    assert t.error is None
    reqs = mine(server, key)
    assert len(reqs) >= 2
    first, *ranged = reqs
    assert "sha-256" in first["headers"]["want-repr-digest"]  # type: ignore[index]
    assert "sha-512" in first["headers"]["want-repr-digest"]  # type: ignore[index]
    assert "want-content-digest" not in first["headers"]  # type: ignore[operator]
    for r in ranged:  # a range's own content is checked by Content-Digest
        assert "sha-256" in r["headers"]["want-content-digest"]  # type: ignore[index]


def test_a_bad_repr_digest_is_fetched_again_once_then_fails(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "bad.bin"
    t = fetch(session, server.url(f"/gen/{SIZE}?bad_digest=repr&key={key}"), dest)
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    msg = t.error.message
    assert "sha256 from Repr-Digest" in msg
    assert "expected" in msg
    assert "got" in msg
    assert hashlib.sha256(gen_bytes(SIZE)).hexdigest() in msg  # what the bytes really are
    assert not dest.exists()  # never under the final name
    only_target(dest)
    assert [r["range"] for r in mine(server, key)] == [None, None]  # once more, from 0
    outcomes = [h["outcome"] for h in t.history()]
    assert len(outcomes) == 2
    assert outcomes[0].startswith("checksum mismatch (sha256 from Repr-Digest")
    assert "checksum mismatch" in outcomes[1]


def test_a_repr_digest_bad_once_is_fetched_again_and_verified(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "once.bin"
    t = fetch(session, server.url(f"/gen/{SIZE}?bad_digest=repr&times=1&key={key}"), dest)
    assert t.error is None, t.error
    assert dest.read_bytes() == gen_bytes(SIZE)
    assert t.restarts == 1
    assert "checksum mismatch" in t.history()[0]["outcome"]


def test_a_bad_content_digest_of_a_range_is_caught(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    # Connection 0 reads a 200 (no Content-Digest asked); the other segment's 206 carries
    # a wrong Content-Digest for its range, while Repr-Digest and the bytes are right.
    dest = tmp_path / "range.bin"
    url = server.url(f"/gen/{SIZE}?bad_digest=content&key={key}")
    t = fetch(session, url, dest, segments=2)
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "Content-Digest of bytes" in t.error.message
    assert "after 2 tries" in t.error.message
    assert not dest.exists()
    only_target(dest)
    assert any("Content-Digest" in h["outcome"] for h in t.history())


def test_a_content_digest_bad_once_on_a_range_then_good(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "range1.bin"
    # The first two requests (the 200 and the first 206) have bad Content-Digests.
    url = server.url(f"/gen/{SIZE}?bad_digest=content&times=2&key={key}")
    t = fetch(session, url, dest, segments=2)
    assert t.error is None, t.error
    assert dest.read_bytes() == gen_bytes(SIZE)
    assert t.restarts == 1


def test_a_bad_content_digest_of_a_resume_is_caught(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    # 1: a 200 cut at 1.2 MB; 2: the resume's 206 (shorter than the cut, so whole) with a
    # wrong Content-Digest; 3: from 0 again, right.
    size, cut = 2 << 20, 1_200_000
    dest = tmp_path / "resume.bin"
    url = server.url(f"/gen/{size}?cut={cut}&bad_digest=content&times=2&key={key}")
    t = fetch(session, url, dest, retry_wait=0.01)
    assert t.error is None, t.error
    assert dest.read_bytes() == gen_bytes(size)
    assert t.restarts == 1
    assert [r["range"] for r in mine(server, key)] == [None, f"bytes={cut}-", None]
    outcome = t.history()[1]["outcome"]
    assert outcome.startswith(f"checksum mismatch (sha256 from Content-Digest of bytes {cut}-")


@pytest.mark.parametrize(
    ("knob", "named"),
    [("goog_hash=1", "md5 from x-goog-hash"), ("amz_checksum=1", "x-amz-checksum-sha256")],
)
def test_cloud_storage_checksums_good_and_bad(
    server: FaultServer,
    session: bgtransfer.Session,
    tmp_path: Path,
    key: str,
    knob: str,
    named: str,
) -> None:
    # Asked for no RFC 9530 digest: the vendor header is the only one.
    no_digest = {"Want-Repr-Digest": "sha-256=0"}
    good = fetch(session, server.url(f"/gen/{SIZE}?{knob}&key={key}"), tmp_path / "g.bin")
    assert good.error is None, good.error
    kind = knob.split("=")[0].replace("_hash", "").replace("_checksum", "")
    bad_url = server.url(f"/gen/{SIZE}?{knob}&bad_digest={kind}&key={key}b")
    bad = fetch(session, bad_url, tmp_path / "b.bin", headers=no_digest)
    assert isinstance(bad.error, bgtransfer.IntegrityError), bad.error
    assert named in bad.error.message
    assert not (tmp_path / "b.bin").exists()


# -- the caller's checksums -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha512", "md5", "sha256"])
def test_caller_checksums_good(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, algorithm: str
) -> None:
    digest = hashlib.new(algorithm, gen_bytes(SIZE)).hexdigest()
    dest = tmp_path / "ok.bin"
    t = fetch(session, server.url(f"/gen/{SIZE}?key={key}"), dest, checksums={algorithm: digest})
    assert t.error is None, t.error
    assert dest.read_bytes() == gen_bytes(SIZE)
    assert list(t.options["checksums"]) == [f"{algorithm}={digest}"]


@pytest.mark.parametrize("algorithm", ["sha512", "md5"])
def test_caller_checksums_bad(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, algorithm: str
) -> None:
    wrong = hashlib.new(algorithm, b"something else").hexdigest()
    dest = tmp_path / "no.bin"
    t = fetch(
        session, server.url(f"/gen/{SIZE}?key={key}"), dest, checksums=[f"{algorithm}={wrong}"]
    )
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert f"{algorithm} from caller expected {wrong}" in t.error.message
    assert hashlib.new(algorithm, gen_bytes(SIZE)).hexdigest() in t.error.message
    assert not dest.exists()
    only_target(dest)
    assert len(mine(server, key)) == 2  # fetched once more, then failed


def test_a_matching_md5_never_outvotes_a_strong_digest(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    md5 = hashlib.md5(gen_bytes(SIZE)).hexdigest()
    url = server.url(f"/gen/{SIZE}?bad_digest=repr&key={key}")
    t = fetch(session, url, tmp_path / "md5.bin", checksums={"md5": md5})
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "Repr-Digest" in t.error.message


def test_a_strong_caller_checksum_is_the_truth(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    sha512 = hashlib.sha512(gen_bytes(SIZE)).hexdigest()
    url = server.url(f"/gen/{SIZE}?bad_digest=repr&key={key}")
    t = fetch(session, url, tmp_path / "s.bin", checksums=[f"sha512={sha512}"])
    assert t.error is None, t.error


def test_sha256_and_checksums_together(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    data = gen_bytes(SIZE)
    t = fetch(
        session,
        server.url(f"/gen/{SIZE}?key={key}"),
        tmp_path / "both.bin",
        sha256=hashlib.sha256(data).hexdigest(),
        checksums={"sha512": hashlib.sha512(data).hexdigest()},
        segments=3,
    )
    assert t.error is None, t.error
    assert t.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "bad",
    [
        {"sha256": "00"},
        "sha256",
        "crc99=abcd",
        ["sha256=" + "0" * 64, "sha256=" + "1" * 64],
        42,
    ],
)
def test_bad_checksums_are_refused_before_a_task_exists(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, bad: object
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest):
        session.download(server.url("/gen/10"), tmp_path / "x.bin", checksums=bad)  # type: ignore[arg-type]
    assert session.tasks() == []


def test_sha256_and_checksums_must_agree(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="two different sha256"):
        session.download(
            server.url("/gen/10"),
            tmp_path / "x.bin",
            sha256="0" * 64,
            checksums={"sha256": "1" * 64},
        )


def test_download_many_takes_checksums(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    data = gen_bytes(SIZE)
    items = [
        {"url": server.url(f"/gen/{SIZE}?key={key}"), "path": tmp_path / "m1.bin",
         "checksums": {"sha512": hashlib.sha512(data).hexdigest()}},
        {"url": server.url(f"/gen/{SIZE}?key={key}2"), "path": tmp_path / "m2.bin",
         "checksums": {"md5": hashlib.md5(b"no").hexdigest()}},
    ]  # fmt: skip
    good, bad = session.download_many(items)
    session.wait_all([good, bad], timeout=60)
    assert good.error is None
    assert isinstance(bad.error, bgtransfer.IntegrityError)


# -- across a kill and a resume ---------------------------------------------------------------


def test_a_good_repr_digest_across_a_kill_and_a_resume(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    from tests.engine.test_crash import SIZE as BIG
    from tests.engine.test_crash import kill_past_a_checkpoint, stored

    origin = gen_bytes(BIG, seed=8)
    url = server.url(f"/gen/{BIG}?seed=8&rate=4000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    kill_past_a_checkpoint(home, url, dest)
    found = stored(home)
    assert found is not None
    assert found[1] > 0
    with bgtransfer.Session("kill", home=home, background=False) as s:
        (task,) = s.tasks()
        task.resume()
        task.wait(timeout=60)
        assert task.error is None, task.error
        assert task.restarts == 0
    assert dest.read_bytes() == origin
    last = [r for r in server.requests("/gen/") if r.query.get("key") == key][-1]
    assert last.range is not None
    assert last.range != "bytes=0-"
    assert "sha-256" in last.headers["want-repr-digest"]


def test_after_a_resume_the_digest_covers_the_bytes_from_offset_0(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """A byte of the committed prefix changed on disk while nobody ran: the resumed
    download's Repr-Digest check reads the prefix back, sees it, and starts over once."""
    from tests.engine.test_crash import SIZE as BIG
    from tests.engine.test_crash import kill_past_a_checkpoint, stored

    origin = gen_bytes(BIG, seed=9)
    url = server.url(f"/gen/{BIG}?seed=9&rate=4000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    kill_past_a_checkpoint(home, url, dest)
    found = stored(home)
    assert found is not None
    assert found[1] > 10
    with open(found[2], "r+b") as f:
        f.seek(10)
        f.write(bytes([origin[10] ^ 0xFF]))
    with bgtransfer.Session("kill", home=home, background=False) as s:
        (task,) = s.tasks()
        task.resume()
        task.wait(timeout=60)
        assert task.error is None, task.error
        assert task.restarts == 1
        assert any("Repr-Digest" in h["outcome"] for h in task.history())
    assert dest.read_bytes() == origin
    ranges = [r.range for r in server.requests("/gen/") if r.query.get("key") == key]
    assert ranges[-1] is None  # started over from 0
    assert ranges[-2] is not None  # after the resume that found the bad prefix


# -- pieces ---------------------------------------------------------------------------------

PIECE = 1 << 20


def pieces_of(data: bytes, algorithm: str = "sha256") -> dict[str, object]:
    return {
        "algorithm": algorithm,
        "piece_size": PIECE,
        "hashes": [
            hashlib.new(algorithm, data[i : i + PIECE]).hexdigest()
            for i in range(0, len(data), PIECE)
        ],
    }


@pytest.mark.parametrize("segments", [1, 3])
def test_good_pieces(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, segments: int
) -> None:
    size = 5 * PIECE + 1234
    data = gen_bytes(size)
    t = fetch(
        session,
        server.url(f"/gen/{size}?key={key}"),
        tmp_path / "p.bin",
        pieces=pieces_of(data, "sha1"),
        segments=segments,
    )
    assert t.error is None, t.error
    assert (tmp_path / "p.bin").read_bytes() == data


@pytest.mark.parametrize("segments", [1, 3])
def test_a_piece_that_stays_bad_is_fetched_alone_a_bounded_number_of_times(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, segments: int
) -> None:
    size = 4 * PIECE
    plist = pieces_of(gen_bytes(size))
    hashes = list(plist["hashes"])  # type: ignore[call-overload]
    hashes[2] = hashlib.sha256(b"not this piece").hexdigest()
    plist["hashes"] = hashes
    dest = tmp_path / "p.bin"
    t = fetch(
        session,
        server.url(f"/gen/{size}?key={key}"),
        dest,
        pieces=plist,
        segments=segments,
        retry_wait=0.01,
    )
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "piece 2 (bytes 2097152-3145727) is still bad after 3 fetches" in t.error.message
    assert not dest.exists()
    only_target(dest)
    ranges = [r["range"] for r in mine(server, key)]
    assert ranges.count("bytes=2097152-3145727") == 3
    assert ranges.count(None) == 1  # the file itself once: no restart


@pytest.mark.parametrize("segments", [1, 2])
def test_a_bad_piece_is_fetched_again_alone(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, segments: int
) -> None:
    """The server sends one bad piece, then (same version) the right bytes: only that
    piece is asked for again, and the file is right."""
    size = 4 * PIECE + 100
    good = gen_bytes(size, seed=3)
    bad = bytearray(good)
    bad[500] ^= 0x55  # piece 0: connection 0 reads it, also when segmented
    name = f"pieces-{key}"
    url = server.add(name, bytes(bad), etag='"v1"')
    # The first answer stalls mid-body, so the fix lands before the piece is asked again.
    url += f"?stall_body=1000&stall=0.5&times=1&key={key}"
    dest = tmp_path / "fixed.bin"
    t = session.download(url, dest, pieces=pieces_of(good), segments=segments)
    deadline = time.monotonic() + 10
    while not server.requests(f"/r/{name}") and time.monotonic() < deadline:
        time.sleep(0.01)
    server.replace(name, good, etag='"v1"', last_modified=FIXED_LAST_MODIFIED)
    t.wait(timeout=60)
    assert t.error is None, t.error
    assert dest.read_bytes() == good
    ranges = [r.range for r in server.requests(f"/r/{name}")]
    assert ranges[0] is None, ranges
    assert ranges[-1] == f"bytes=0-{PIECE - 1}"  # piece 0 alone, once
    assert ranges.count(ranges[-1]) == 1
    assert t.restarts == 0
    assert any(h["outcome"] == "piece 0 fetched again" for h in t.history())


def test_a_piece_list_that_does_not_fit_the_file_fails(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    plist = pieces_of(gen_bytes(3 * PIECE))
    t = fetch(session, server.url(f"/gen/{5 * PIECE}?key={key}"), tmp_path / "n.bin", pieces=plist)
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "piece list does not fit" in t.error.message
    assert not (tmp_path / "n.bin").exists()


def test_bad_piece_lists_are_refused(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path
) -> None:
    for bad in (
        {"algorithm": "sha256", "piece_size": 0, "hashes": ["00" * 32]},
        {"algorithm": "sha256", "piece_size": 10, "hashes": ["00"]},
        {"algorithm": "nope", "piece_size": 10, "hashes": ["00" * 32]},
        ["sha256"],
    ):
        with pytest.raises(bgtransfer.InvalidRequest):
            session.download(server.url("/gen/10"), tmp_path / "x.bin", pieces=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("segments", [1, 4])
def test_the_tail_hash_covers_a_file_of_many_jobs(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str, segments: int
) -> None:
    """Larger than the tail's step (16 MiB) and job (64 MiB): every byte hashed once, in
    order, also when segments fill the file out of order."""
    size = (80 << 20) + 123
    dest = tmp_path / "big.bin"
    url = server.url(f"/gen/{size}?key={key}")
    t = fetch(session, url, dest, checksums={"sha256": gen_sha256(size)}, segments=segments)
    assert t.error is None, t.error
    assert t.restarts == 0
    assert os.path.getsize(dest) == size


def test_a_file_found_complete_after_a_suspend_is_still_checked(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    """Suspended while a bad piece waits to be fetched again: the resume finds the file
    complete (416), and the checks run before placing it, so the bad piece is not placed."""
    size = 3 * PIECE
    plist = pieces_of(gen_bytes(size))
    hashes = list(plist["hashes"])  # type: ignore[call-overload]
    hashes[1] = hashlib.sha256(b"not this piece").hexdigest()
    plist["hashes"] = hashes
    dest = tmp_path / "s.bin"
    url = server.url(f"/gen/{size}?key={key}")
    t = session.download(url, dest, pieces=plist, retry_wait=30.0, max_retry_wait=30.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(r["range"] == f"bytes={PIECE}-{2 * PIECE - 1}" for r in mine(server, key)):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the bad piece was never asked for again")
    t.suspend()  # during the 30 s backoff before its second fetch
    t.resume()
    t.wait(timeout=60)
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "piece 1 (bytes 1048576-2097151) does not match its hash" in t.error.message
    assert not dest.exists()
    assert mine(server, key)[-1]["range"] == f"bytes={size}-"  # found complete: 416


def test_an_idempotency_key_with_other_checksums_is_another_request(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/{SIZE}?key={key}")
    md5 = hashlib.md5(gen_bytes(SIZE)).hexdigest()
    first = session.download(url, tmp_path / "k.bin", idempotency_key=key, checksums={"md5": md5})
    again = session.download(url, tmp_path / "k.bin", idempotency_key=key, checksums={"md5": md5})
    assert again.id == first.id
    with pytest.raises(bgtransfer.InvalidRequest, match="different checksums"):
        session.download(url, tmp_path / "k.bin", idempotency_key=key, checksums={"md5": "0" * 32})
    first.wait(timeout=60)
    assert first.error is None


def test_a_metalink_files_pieces_are_checked(
    server: FaultServer, session: bgtransfer.Session, tmp_path: Path, key: str
) -> None:
    import urllib.request

    meta = server.url(f"/metalink/gen/{4 * PIECE}?mirrors=1&piece=1M&seed=11&key={key}")
    with urllib.request.urlopen(meta, timeout=10) as r:
        doc = r.read()
    (good,) = bgtransfer.metalink_downloads(doc, path=tmp_path / "m.bin")
    assert good["pieces"]["piece_size"] == PIECE
    assert len(good["pieces"]["hashes"]) == 4
    t = session.download(**good, segments=2).wait(timeout=60)
    assert t.error is None, t.error
    assert (tmp_path / "m.bin").read_bytes() == gen_bytes(4 * PIECE, seed=11)
    # The same document with piece 3's hash wrong: that piece alone is asked for again.
    wrong = good["pieces"]["hashes"][3]
    bad_doc = doc.replace(wrong.encode(), hashlib.sha256(b"x").hexdigest().encode())
    (bad,) = bgtransfer.metalink_downloads(bad_doc, path=tmp_path / "n.bin")
    t = session.download(**bad, retry_wait=0.01).wait(timeout=60)
    assert isinstance(t.error, bgtransfer.IntegrityError), t.error
    assert "piece 3 (bytes 3145728-4194303)" in t.error.message
