"""The pure parts of the integrity options (issue 17): checksums=, pieces=, decide()'s rule
that a weak digest never outvotes a strong one, and the tail's hole-free reach."""

from __future__ import annotations

import hashlib

import pytest

from bgtransfer import InvalidRequest
from bgtransfer._options import DownloadOptions
from bgtransfer._protocol._digest import (
    Checksum,
    Expected,
    Verdict,
    caller_checksums,
    check_checksums,
    decide,
)
from bgtransfer._protocol._pieces import check_pieces, plan_of

SHA = hashlib.sha256(b"x").hexdigest()
MD5 = hashlib.md5(b"x").hexdigest()


def test_check_checksums_forms() -> None:
    assert check_checksums(None) == ()
    assert check_checksums({"sha256": SHA}) == (f"sha256={SHA}",)
    assert check_checksums(f"SHA-256={SHA.upper()}") == (f"sha256={SHA}",)
    assert check_checksums([f"md5={MD5}", f"sha256={SHA}"]) == (f"md5={MD5}", f"sha256={SHA}")
    assert check_checksums({"sha256": SHA}, sha256=SHA) == (f"sha256={SHA}",)


@pytest.mark.parametrize(
    "bad",
    [
        {"sha256": 1},
        {1: SHA},
        b"sha256=00",
        3.0,
        ["sha256"],
        [f"sha256={SHA}", "sha256=" + "0" * 64],
    ],
)
def test_check_checksums_refuses(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        check_checksums(bad)


def test_sha256_option_and_checksums_must_agree() -> None:
    with pytest.raises(InvalidRequest, match="two different sha256"):
        DownloadOptions(sha256="0" * 64, checksums={"sha256": SHA})  # type: ignore[arg-type]


def test_caller_checksums_leave_sha256_to_its_own_option() -> None:
    got = caller_checksums([f"md5={MD5}"], None)
    assert [e.checksum.algorithm for e in got] == ["md5"]
    assert all(e.source == "caller" for e in got)
    both = caller_checksums([f"md5={MD5}"], SHA)
    assert sorted(e.checksum.algorithm for e in both) == ["md5", "sha256"]


def test_check_pieces_forms_and_plan() -> None:
    digest = hashlib.sha256(b"a" * 10).hexdigest()
    spec = {"algorithm": "SHA-256", "piece_size": 10, "hashes": [digest, digest]}
    stored = check_pieces(spec)
    assert stored == ("sha256", 10, (digest, digest))
    assert check_pieces(list(stored)) == stored  # the JSON form comes back as a list
    assert check_pieces(None) is None
    plan = plan_of(stored, 15)
    assert plan.count == 2
    assert plan.piece_range(1) == (10, 15)
    with pytest.raises(InvalidRequest):
        plan_of(stored, 25)  # three pieces' worth of bytes for two hashes
    with pytest.raises(InvalidRequest):
        check_pieces("sha256:10:" + digest)


def test_a_weak_caller_match_never_outvotes_a_strong_server_digest() -> None:
    data = b"payload"
    server = Expected(Checksum("sha256", hashlib.sha256(b"other").digest()), "Repr-Digest")
    caller_md5 = Expected(Checksum("md5", hashlib.md5(data).digest()), "caller")
    computed = {"sha256": hashlib.sha256(data).digest(), "md5": hashlib.md5(data).digest()}
    assert decide([server, caller_md5], computed, retries_done=0).verdict is Verdict.RETRY
    caller_sha512 = Expected(Checksum("sha512", hashlib.sha512(data).digest()), "caller")
    computed["sha512"] = hashlib.sha512(data).digest()
    decision = decide([server, caller_sha512], computed, retries_done=0)
    assert decision.verdict is Verdict.OK
    assert decision.ignored
