"""``bgtransfer adopt``: a partial file outlives its daemon and its home, and a new home
resumes it from the record beside it (issue 17, self-describing partials)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgtransfer._protocol._sidecar import XATTR_NAME, sidecar_path
from bgtransfer.testing import FaultServer, gen_bytes
from tests.cli.test_cli import bgt
from tests.daemon.conftest import kill_daemon, kill_every_daemon


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    old, new = tmp_path / "old-home", tmp_path / "new-home"
    old.mkdir(mode=0o700)
    new.mkdir(mode=0o700)
    yield old, new
    for h in (old, new):
        kill_daemon(h)
        kill_every_daemon(h)


def record(part: str) -> dict[str, Any] | None:
    found: dict[str, Any]
    try:
        found = json.loads(os.getxattr(part, XATTR_NAME))
    except OSError:
        pass
    else:
        return found
    try:
        with open(sidecar_path(part), "rb") as f:
            found = json.loads(f.read())
    except FileNotFoundError:
        return None
    return found


def partial_left_by_a_killed_daemon(
    home: Path, url: str, dest: Path, env: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """Start a download in ``home``'s daemon, SIGKILL the daemon once the partial's record
    vouches for some bytes, delete the home: (the partial, its record)."""
    r = bgt(home, "add", url, "-o", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    part, rec = "", None
    while time.monotonic() < deadline:
        found = glob.glob(str(dest.parent / f".{dest.name}.*.bgtransfer-part"))
        if found:
            part = found[0]
            rec = record(part)
            if rec is not None and int(rec["offset"]) > 0:
                break
        time.sleep(0.02)
    assert rec is not None, "no record within 20 s"
    assert kill_daemon(home) is not None
    shutil.rmtree(home)  # the store is gone: only the file and its record are left
    final = record(part)
    assert final is not None
    return part, final


def requests_of(server: FaultServer, key: str, since: int) -> list[dict[str, str]]:
    return [r.headers for r in server.requests()[since:] if r.query.get("key") == key]


def test_adopt_in_a_fresh_home_after_the_daemon_was_killed(
    server: FaultServer, homes: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    old, new = homes
    size = 6 << 20
    dest = tmp_path / "big.iso"
    part, rec = partial_left_by_a_killed_daemon(
        old, server.url(f"/gen/{size}?rate=3000000&key={key}"), dest
    )
    size_before = os.path.getsize(part)
    before = len(server.requests())
    r = bgt(new, "adopt", part, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "completed"
    assert doc["error"] is None
    assert doc["path"] == str(dest)
    assert f"adopting {part}: {rec['offset']} bytes vouched for" in r.stderr
    assert dest.read_bytes() == gen_bytes(size)
    # Only what the record did not vouch for was fetched: one request, from its offset,
    # conditional on its validator.
    sent = requests_of(server, key, before)
    assert [h.get("range") for h in sent] == [f"bytes={rec['offset']}-"]
    assert sent[0].get("if-range") == rec["etag"]
    assert int(rec["offset"]) <= size_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.iso", "new-home"]


def test_adopt_a_changed_resource_restarts_cleanly(
    server: FaultServer, homes: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    """etag_change: every request sees a new version. The adoption's If-Range does not
    match, the server answers 200 with the whole new version, and that is what the file
    holds: never old bytes followed by new ones."""
    old, new = homes
    size = 4 << 20
    dest = tmp_path / "moving.bin"
    part, rec = partial_left_by_a_killed_daemon(
        old, server.url(f"/gen/{size}?rate=3000000&etag_change=1&key={key}"), dest
    )
    assert rec["etag"] == f'"gen-{size}-0-v1"'
    before = len(server.requests())
    r = bgt(new, "adopt", part, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restarts"] == 1
    assert dest.read_bytes() == gen_bytes(size, 2)  # version 2: the adoption's answer
    sent = requests_of(server, key, before)
    assert sent[0].get("if-range") == rec["etag"]


def test_adopt_refusals_and_exit_codes(
    server: FaultServer, homes: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    old, new = homes
    plain = tmp_path / "plain.part"
    plain.write_bytes(b"0123456789")
    r = bgt(new, "adopt", str(plain), "-o", str(tmp_path / "plain.bin"))
    assert r.returncode == 5, r.stderr
    assert "carries no partial record" in r.stderr
    os.setxattr(plain, XATTR_NAME, b"\x00garbage")
    r = bgt(new, "adopt", str(plain), "-o", str(tmp_path / "plain.bin"))
    assert r.returncode == 5, r.stderr
    assert "not JSON" in r.stderr
    r = bgt(new, "adopt", str(tmp_path / "missing.part"))
    assert r.returncode == 5, r.stderr
    # A partial that a live task of this home writes.
    dest = tmp_path / "live.bin"
    r = bgt(old, "add", server.url(f"/gen/{8 << 20}?rate=1000000&key={key}"), "-o", str(dest))
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    deadline = time.monotonic() + 20
    part = None
    while time.monotonic() < deadline:
        found = glob.glob(str(tmp_path / ".live.bin.*.bgtransfer-part"))
        if found and record(found[0]) is not None:
            part = found[0]
            break
        time.sleep(0.02)
    assert part is not None
    r = bgt(old, "adopt", part, "-o", str(tmp_path / "twice.bin"))
    assert r.returncode == 5, r.stderr
    assert f"partial file of task {task_id}" in r.stderr
    assert bgt(old, "cancel", task_id).returncode == 0
    assert not os.path.exists(part)
    assert not os.path.exists(sidecar_path(part))


def test_adopt_from_a_sidecar(
    server: FaultServer, homes: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    """A filesystem without user xattrs (forced here: BGTRANSFER_PARTIAL_RECORD=sidecar in
    the old daemon's environment) keeps the record in a 0600 file beside the partial."""
    old, new = homes
    size = 4 << 20
    dest = tmp_path / "side.bin"
    part, rec = partial_left_by_a_killed_daemon(
        old,
        server.url(f"/gen/{size}?rate=3000000&key={key}"),
        dest,
        env={"BGTRANSFER_PARTIAL_RECORD": "sidecar"},
    )
    assert os.path.exists(sidecar_path(part))
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(part, XATTR_NAME)
    before = len(server.requests())
    r = bgt(new, "adopt", part)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == gen_bytes(size)
    assert [h.get("range") for h in requests_of(server, key, before)] == [f"bytes={rec['offset']}-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new-home", "side.bin"]


def test_adopt_with_a_refresh_command_for_an_expired_link(
    server: FaultServer, homes: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    """The record keeps the signed URL it was given, never a command (a record must not
    make ``adopt`` run a program): the refresh command is given to ``adopt`` again, and a
    link that dies during the adoption is refreshed with the bytes kept."""
    old, new = homes
    size = 4 << 20
    path = f"/gen/{size}?rate=2000000&key={key}"
    signed = server.sign_url(path, max_bytes=3_000_000)  # dies after 3 MB in all
    dest = tmp_path / "signed.bin"
    part, rec = partial_left_by_a_killed_daemon(old, signed, dest)
    assert rec["url"] == signed
    mint = tmp_path / "mint.py"
    mint.write_text(
        "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1]).read().decode())\n"
    )
    sign = server.url(f"/sign?path={path.replace('?', '%3F').replace('&', '%26')}")
    r = bgt(new, "adopt", part, "--refresh-cmd", f"{sys.executable} {mint} '{sign}'", "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == gen_bytes(size)
    shown = bgt(new, "show", json.loads(r.stdout)["id"])
    assert "URL refreshed" in shown.stdout, shown.stdout
