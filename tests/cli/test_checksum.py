"""`get --checksum ALGO=HEX` and `--checksum-from URL` (issue 17), through the daemon."""

# ruff: noqa: F811 - `home` is the fixture imported below

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bgtransfer.testing import FaultServer, gen_bytes
from tests.cli.test_cli import bgt, home  # noqa: F401 - the fixture

SIZE = 1 << 20


def test_get_with_checksums(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    data = gen_bytes(SIZE)
    url = server.url(f"/gen/{SIZE}?key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "a.bin"),
            "--checksum", f"sha256={hashlib.sha256(data).hexdigest()}",
            "--checksum", f"sha-512={hashlib.sha512(data).hexdigest()}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.bin").read_bytes() == data
    wrong = hashlib.md5(b"other").hexdigest()
    r = bgt(home, "get", url, "-o", str(tmp_path / "b.bin"), "--checksum", f"md5={wrong}")
    assert r.returncode == 1, r.stderr
    assert f"md5 from caller expected {wrong}, got {hashlib.md5(data).hexdigest()}" in r.stderr
    assert not (tmp_path / "b.bin").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".bgtransfer-part")]


@pytest.mark.parametrize("bad", ["sha256=xyz", "nope=abcd", "sha256", "md5=" + "0" * 31])
def test_a_bad_checksum_is_a_usage_error(home: Path, tmp_path: Path, bad: str) -> None:
    r = bgt(home, "add", "http://127.0.0.1:9/x", "-o", str(tmp_path / "c.bin"), "--checksum", bad)
    assert r.returncode == 64, r.stderr
    assert "--checksum" in r.stderr
    assert not (home / "control.sock").exists()  # refused before the daemon was asked


def test_two_different_checksums_of_one_algorithm_are_refused(home: Path, tmp_path: Path) -> None:
    r = bgt(home, "add", "http://127.0.0.1:9/x", "-o", str(tmp_path / "c.bin"),
            "--sha256", "0" * 64, "--checksum", "sha256=" + "1" * 64)  # fmt: skip
    assert r.returncode == 5, r.stderr
    assert "two different sha256" in r.stderr


def test_checksum_from_a_sums_file(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    data = gen_bytes(SIZE, seed=4)
    url = server.add(f"{key}/file.bin", data)
    server.add(f"{key}/other.bin", b"other bytes")
    sums = server.url(f"/r/{key}/SHA256SUMS")
    r = bgt(home, "get", url, "-o", str(tmp_path / "f.bin"), "--checksum-from", sums, "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.bin").read_bytes() == data
    assert json.loads(r.stdout)["error"] is None
    # A .sha256 next to the file (one line) works the same.
    r = bgt(home, "get", url, "-o", str(tmp_path / "g.bin"), "--checksum-from", url + ".sha256")
    assert r.returncode == 0, r.stderr


def test_checksum_from_a_sums_file_that_disagrees(
    server: FaultServer,
    home: Path,
    tmp_path: Path,
    key: str,
) -> None:
    # The sums of /gen/1048576 (seed 0) for a download of the same name with other bytes.
    url = server.url(f"/gen/{SIZE}?seed=5&key={key}")
    sums = server.url(f"/gen/{SIZE}.sha256")
    r = bgt(home, "get", url, "-o", str(tmp_path / "h.bin"), "--checksum-from", sums)
    assert r.returncode == 1, r.stderr
    assert f"sha256 from caller expected {hashlib.sha256(gen_bytes(SIZE)).hexdigest()}" in r.stderr
    assert not (tmp_path / "h.bin").exists()


def test_checksum_from_failures_come_before_the_task(
    server: FaultServer,
    home: Path,
    tmp_path: Path,
    key: str,
) -> None:
    url = server.add(f"{key}/file.bin", b"x" * 100)
    server.add(f"{key}/else.bin", b"y")
    missing = server.url(f"/r/{key}/nothing.sha256?status=404")
    r = bgt(home, "get", url, "-o", str(tmp_path / "i.bin"), "--checksum-from", missing)
    assert r.returncode == 1, r.stderr
    assert "--checksum-from" in r.stderr
    assert "404" in r.stderr
    r = bgt(home, "get", url, "-o", str(tmp_path / "i.bin"), "--checksum-from", "ftp://x/SUMS")
    assert r.returncode == 5, r.stderr
    # A sums file without a line for this file's name.
    sums = server.url(f"/r/{key}/SHA256SUMS")
    r = bgt(home, "get", url + "x", "-o", str(tmp_path / "i.bin"), "--checksum-from", sums)
    assert r.returncode == 5, r.stderr
    assert "no line for 'file.binx'" in r.stderr
    assert not (home / "control.sock").exists()  # nothing was submitted: no daemon asked
    assert not (tmp_path / "i.bin").exists()


def test_checksum_from_sends_credentials_only_to_the_downloads_origin(
    server: FaultServer,
    home: Path,
    tmp_path: Path,
    key: str,
) -> None:
    url = server.add(f"{key}/cred.bin", b"z" * 1000)
    other = server.other_base_url
    assert other is not None
    auth = ["-H", "Authorization: Bearer s3cret"]
    for base, name in ((server.base_url, "same"), (other, "else")):
        sums = f"{base}/r/{key}/cred.bin.sha256?key={key}{name}"
        r = bgt(home, "get", url, "-o", str(tmp_path / f"{name}.bin"), *auth,
                "--checksum-from", sums)  # fmt: skip
        assert r.returncode == 0, r.stderr
    seen = {
        r.query["key"]: r.headers.get("authorization")
        for r in server.requests(f"/r/{key}/cred.bin.sha256")
    }
    assert seen == {f"{key}same": "Bearer s3cret", f"{key}else": None}
