"""Self-describing partials (issue 17): the record beside each partial file, kept by the
real engine against the real test server, and adopting a partial in a fresh home."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer._engine._sidecar_io import RecordKeeper
from bgtransfer._protocol._sidecar import (
    XATTR_NAME,
    PartialRecord,
    decode,
    encode,
    sidecar_path,
)
from bgtransfer._protocol._task import Spec
from bgtransfer.testing import FaultServer, gen_bytes, gen_sha256

ENV = "BGTRANSFER_PARTIAL_RECORD"


def xattr(path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(os.getxattr(path, XATTR_NAME))
    except OSError:
        return None
    return found


def sidecar(path: str) -> dict[str, Any] | None:
    try:
        with open(sidecar_path(path), "rb") as f:
            found: dict[str, Any] = json.loads(f.read())
    except FileNotFoundError:
        return None
    return found


def until(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def partial_of(s: bgtransfer.Session, t: bgtransfer.Task) -> str:
    return s._async._engine_or_raise().get(t.id).partial


def started(
    tmp_path: Path, server: FaultServer, url: str, name: str = "f.bin", **kw: Any
) -> tuple[bgtransfer.Session, bgtransfer.Task, str]:
    s = bgtransfer.Session("rec", home=tmp_path / "home", background=False)
    t = s.download(url, tmp_path / name, **kw)
    return s, t, partial_of(s, t)


def test_record_appears_after_first_checkpoint_and_tracks_the_offset(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 6 << 20
    url = server.url(f"/gen/{size}?rate=2000000&key={key}")
    s, t, part = started(tmp_path, server, url, sha256=None)
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 15
        while len(set(seen)) < 2 and time.monotonic() < deadline:
            rec = xattr(part)
            if rec is not None:
                # Never ahead of the file: the record is written after the data's fdatasync.
                assert rec["offset"] <= os.path.getsize(part)
                seen.append(rec["offset"])
            time.sleep(0.02)
        assert len(set(seen)) >= 2, seen
        assert seen == sorted(seen)
        assert seen[0] > 0  # no record before the first checkpoint had bytes to vouch for
        t.suspend()  # a checkpoint: the store's offset and the record's are the same
        rec = xattr(part)
        assert rec is not None
        assert rec["offset"] == t.bytes_received == os.path.getsize(part)
        assert rec["url"] == url
        assert rec["length"] == size
        assert rec["etag"] == f'"gen-{size}-0-v0"'
        assert rec["path"] == str(tmp_path / "f.bin")
        assert rec["partial"] == os.path.basename(part)
        assert "headers" not in rec
        assert sidecar(part) is None  # an xattr where the filesystem has them
        t.resume()
        t.wait(30)
        assert t.error is None
        # The finished file carries no record (it may be world-readable; a signed URL
        # must not go with it), and nothing is left beside it.
        assert os.listxattr(tmp_path / "f.bin") == []
        assert sorted(os.listdir(tmp_path)) == ["f.bin", "home"]
    finally:
        s.close()


def test_cancel_removes_the_record_with_the_partial(
    server: FaultServer, tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "sidecar")
    s, t, part = started(tmp_path, server, server.url(f"/gen/{8 << 20}?rate=2000000&key={key}"))
    try:
        until(lambda: sidecar(part))
        t.cancel()
        assert sorted(os.listdir(tmp_path)) == ["home"]
    finally:
        s.close()


def test_sidecar_when_forced_0600_and_gone_at_the_end(
    server: FaultServer, tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "sidecar")
    size = 5 << 20
    s, t, part = started(tmp_path, server, server.url(f"/gen/{size}?rate=2000000&key={key}"))
    try:
        rec = until(lambda: sidecar(part))
        assert rec["offset"] <= os.path.getsize(part)
        assert xattr(part) is None
        mode = stat.S_IMODE(os.stat(sidecar_path(part)).st_mode)
        assert mode == 0o600
        t.suspend()
        assert sidecar(part)["offset"] == t.bytes_received  # type: ignore[index]
        assert not glob.glob(str(tmp_path / "*.tmp"))  # replaced by rename, no debris
        t.resume()
        t.wait(30)
        assert t.error is None
        assert sorted(os.listdir(tmp_path)) == ["f.bin", "home"]
    finally:
        s.close()


def test_a_record_too_big_for_an_xattr_goes_to_the_sidecar(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    # A signed URL can be kilobytes long; ext4 keeps every attribute in one 4 KiB block.
    pad = "x" * 4000
    url = server.url(f"/gen/{4 << 20}?rate=2000000&key={key}&pad={pad}")
    s, t, part = started(tmp_path, server, url)
    try:
        rec = until(lambda: sidecar(part))
        assert rec["url"] == url
        assert xattr(part) is None
        t.wait(30)
        assert t.error is None
        assert sorted(os.listdir(tmp_path)) == ["f.bin", "home"]
    finally:
        s.close()


def test_off_writes_no_record(
    server: FaultServer, tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "off")
    s, t, part = started(tmp_path, server, server.url(f"/gen/{4 << 20}?rate=2000000&key={key}"))
    try:
        until(lambda: t.bytes_received > 2_500_000)  # past the first checkpoint
        t.suspend()
        assert xattr(part) is None
        assert sidecar(part) is None
        t.cancel()
    finally:
        s.close()


def test_a_restart_replaces_the_old_representations_record(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """A resource that changed under a resume: the old record must not survive next to the
    new bytes (it would vouch for them with the old validator)."""
    size = 4 << 20
    url = server.url(f"/gen/{size}?rate=3000000&key={key}")
    s, t, part = started(tmp_path, server, url)
    try:
        until(lambda: xattr(part))
        t.suspend()
        old = xattr(part)
        assert old is not None
        assert old["etag"] == f'"gen-{size}-0-v0"'
    finally:
        s.close()
    # The same task, resumed against a server whose answer is another version.
    shutil.rmtree(tmp_path / "home")
    with bgtransfer.Session("rec", home=tmp_path / "home2", background=False) as s2:
        t2 = s2.adopt(part, url=server.url(f"/gen/{size}?rate=3000000&seed=7&key={key}"))
        until(lambda: (xattr(part) or {}).get("etag") == f'"gen-{size}-7-v0"')
        rec = xattr(part)
        assert rec is not None
        assert rec["offset"] <= os.path.getsize(part)
        t2.wait(30)
        assert t2.error is None
        assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size, 7)


def test_sidecar_updates_are_rate_limited_and_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar costs an fdatasync: at most one a second, plus the one skipped, when the
    file is closed (so a suspended task's record says what its store says)."""
    monkeypatch.setenv(ENV, "sidecar")
    part = str(tmp_path / ".x.0123456789ab.bgtransfer-part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
    offset = [100]

    def open_dir() -> int:
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    keeper = RecordKeeper(part)
    keeper.describe = lambda: PartialRecord("http://h/x", offset[0], 1000, partial=Path(part).name)
    try:
        assert keeper.write(fd, open_dir)  # the first one creates the sidecar
        offset[0] = 200
        assert not keeper.write(fd, open_dir)  # within the second: skipped
        assert sidecar(part)["offset"] == 100  # type: ignore[index]
        keeper.catch_up(fd, open_dir)
        assert sidecar(part)["offset"] == 200  # type: ignore[index]
        assert not keeper.catch_up(fd, open_dir)  # nothing left to catch up
    finally:
        os.close(fd)


def test_spec_adopt_round_trips_and_old_rows_decode() -> None:
    spec = Spec(url="http://h/x", adopt="/d/.x.part")
    assert Spec.from_json(spec.to_json()) == spec
    old = json.loads(Spec(url="http://h/x").to_json())
    del old["adopt"]  # a row stored before the field existed
    assert Spec.from_dict(old).adopt is None


# -- adopting ----------------------------------------------------------------------------


def interrupted_partial(tmp_path: Path, url: str, at: int, **kw: Any) -> tuple[str, dict[str, Any]]:
    """A partial left by a foreground session closed mid-transfer, its home then deleted:
    (its path, its record)."""
    with bgtransfer.Session("old", home=tmp_path / "old-home", background=False) as s:
        t = s.download(url, tmp_path / "f.bin", **kw)
        part = partial_of(s, t)
        until(lambda: (xattr(part) or {}).get("offset", 0) >= at, timeout=30)
    shutil.rmtree(tmp_path / "old-home")
    rec = xattr(part)
    assert rec is not None
    return part, rec


def test_adopt_in_a_fresh_home_fetches_only_the_rest(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 6 << 20
    url = server.url(f"/gen/{size}?rate=3000000&key={key}")
    part, rec = interrupted_partial(tmp_path, url, 1 << 20)
    before = len(server.requests())
    with bgtransfer.Session("new", home=tmp_path / "new-home", background=False) as s:
        t = s.adopt(part)
        assert t.path == str(tmp_path / "f.bin")
        t.wait(30)
        assert t.error is None
    assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size)
    mine = [r for r in server.requests()[before:] if r.query.get("key") == key]
    assert [r.headers.get("range") for r in mine] == [f"bytes={rec['offset']}-"]
    assert mine[0].headers.get("if-range") == rec["etag"]
    assert sorted(os.listdir(tmp_path)) == ["f.bin", "new-home"]


def test_adopt_segmented_resumes_the_recorded_segments(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 8 << 20
    url = server.url(f"/gen/{size}?rate=2000000&key={key}")
    part, rec = interrupted_partial(tmp_path, url, 1 << 20, segments=4)
    assert len(rec["segments"]) >= 2
    before = len(server.requests())
    with bgtransfer.Session("new", home=tmp_path / "new-home", background=False) as s:
        t = s.adopt(part)
        t.wait(60)
        assert t.error is None, t.error
    assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size)
    mine = [r for r in server.requests()[before:] if r.query.get("key") == key]
    starts = sorted(int(r.headers["range"][6:].split("-")[0]) for r in mine)
    unfinished = sorted(pos for _, pos, end in rec["segments"] if pos < end)
    # Every unfinished segment resumed from its recorded position, nothing from 0.
    assert set(unfinished) <= set(starts), (unfinished, starts)
    assert all(r.headers.get("if-range") == rec["etag"] for r in mine)


def test_async_adopt(server: FaultServer, tmp_path: Path, key: str) -> None:
    size = 3 << 20
    part, _ = interrupted_partial(tmp_path, server.url(f"/gen/{size}?rate=2000000&key={key}"), 1)

    async def main() -> None:
        async with bgtransfer.AsyncSession(
            "new", home=tmp_path / "new-home", background=False
        ) as s:
            t = await s.adopt(part, tmp_path / "renamed.bin")
            await t.wait(30)
            assert t.error is None

    asyncio.run(main())
    assert (tmp_path / "renamed.bin").read_bytes() == gen_bytes(size)


def test_adopt_refusals(server: FaultServer, tmp_path: Path, key: str) -> None:
    size = 3 << 20
    url = server.url(f"/gen/{size}?rate=1500000&key={key}")
    part, _ = interrupted_partial(tmp_path, url, 1)
    plain = tmp_path / "plain.part"
    plain.write_bytes(b"x" * 100)
    with bgtransfer.Session("new", home=tmp_path / "new-home", background=False) as s:
        with pytest.raises(bgtransfer.NoPartialRecord, match="no partial record"):
            s.adopt(plain, tmp_path / "plain.bin")
        os.setxattr(plain, XATTR_NAME, b'{"v":1,"url":"http://h/x"')
        with pytest.raises(bgtransfer.PartialRecordCorrupt, match="not JSON"):
            s.adopt(plain, tmp_path / "plain.bin")
        os.removexattr(plain, XATTR_NAME)
        # A sidecar copied beside another file describes that other file.
        other = decode(os.getxattr(part, XATTR_NAME))
        Path(sidecar_path(str(plain))).write_bytes(encode(other))
        with pytest.raises(bgtransfer.PartialRecordMismatch, match="another file"):
            s.adopt(plain, tmp_path / "plain.bin")
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(bgtransfer.InvalidRequest, match="partial file's directory"):
            s.adopt(part, tmp_path / "elsewhere" / "f.bin")
        link = tmp_path / "link.part"
        link.symlink_to(part)
        with pytest.raises(bgtransfer.InvalidRequest, match="symlink"):
            s.adopt(link, tmp_path / "f.bin")
        t = s.adopt(part)
        # The partial is this task's now: a second adoption in this home is refused.
        with pytest.raises(bgtransfer.PartialInUse, match=t.id):
            s.adopt(part, tmp_path / "other.bin")
        t.wait(30)
        assert t.error is None
    assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size)
    assert not os.path.exists(part)
    assert issubclass(bgtransfer.PartialInUse, bgtransfer.CannotAdopt)
    assert issubclass(bgtransfer.CannotAdopt, bgtransfer.InvalidRequest)


def test_adopt_keeps_the_mirrors(server: FaultServer, tmp_path: Path, key: str) -> None:
    size = 4 << 20
    base = server.url(f"/gen/{size}?rate=2000000&key={key}")
    urls = [base, base + "&mirror=2"]
    with bgtransfer.Session("old", home=tmp_path / "old-home", background=False) as s:
        t = s.download(urls=urls, path=tmp_path / "f.bin", sha256=gen_sha256(size))
        part = partial_of(s, t)
        rec = until(lambda: xattr(part))
    shutil.rmtree(tmp_path / "old-home")
    assert rec["url"] == base
    assert rec["mirrors"] == [base + "&mirror=2"]
    assert rec["checksums"] == [f"sha256={gen_sha256(size)}"]
    with bgtransfer.Session("new", home=tmp_path / "new-home", background=False) as s:
        t = s.adopt(part)
        row = s._async._engine_or_raise().get(t.id)
        assert row.spec.urls == tuple(urls)
        assert row.spec.sha256 == gen_sha256(size)  # carried by the record
        t.wait(30)
        assert t.error is None
    assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size)


def test_adopt_a_copy_cut_short_resumes_from_what_is_there(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 4 << 20
    url = server.url(f"/gen/{size}?rate=3000000&key={key}")
    part, rec = interrupted_partial(tmp_path, url, 1 << 20)
    short = rec["offset"] - 12345
    os.truncate(part, short)  # fewer bytes than the record vouches for
    before = len(server.requests())
    with bgtransfer.Session("new", home=tmp_path / "new-home", background=False) as s:
        t = s.adopt(part)
        t.wait(30)
        assert t.error is None
    assert (tmp_path / "f.bin").read_bytes() == gen_bytes(size)
    mine = [r for r in server.requests()[before:] if r.query.get("key") == key]
    assert [r.headers.get("range") for r in mine] == [f"bytes={short}-"]
