"""Issue 11, "Files": the partial file is known by identity, its directory by descriptor,
sha256 decided on the bytes on disk, the finished file's mode, relative paths, the history.

Real parts only: the fault server, real files, a real foreground engine.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import build_row
from bgtransfer.testing import FaultServer, gen_bytes, gen_sha256

from ._virtual import Finished, VirtualTime, run_engine

SIZE = 1 << 20
CUT = 300_000
# The retry wait in which things are swapped (the delay is 0.5-1x of it); slept on the
# engine's virtual clock, with the swap inside it.
SLOW_RETRY: dict[str, Any] = {"retry_wait": 3.0, "max_retry_wait": 3.0}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def tampered_in_retry_wait(
    tmp_path: Path, url: str, dest: Path, tamper: Callable[[Path], None], **kw: Any
) -> Finished:
    """Download ``url`` on an engine whose sleeps are virtual; ``tamper(partial)`` runs
    inside its first sleep: the retry wait after the cut, while no request is open."""
    rows: list[TaskRow] = []
    failed: list[BaseException] = []

    def in_sleep(delay: float) -> None:
        if len(vt.slept) != 1:
            return
        try:
            assert SLOW_RETRY["retry_wait"] / 2 <= delay <= SLOW_RETRY["retry_wait"], delay
            tamper(Path(rows[0].partial))
        except (AssertionError, OSError) as exc:  # reported here, not as an engine failure
            failed.append(exc)

    vt = VirtualTime(on_sleep=in_sleep)

    def build() -> TaskRow:
        rows.append(build_row("trust", url, dest, background=False, **SLOW_RETRY, **kw))
        return rows[0]

    done = asyncio.run(run_engine(tmp_path / "home", vt, build, timeout=60))
    if failed:
        raise failed[0]
    assert vt.slept, "the download never waited to retry"
    return done


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


# -- item 7: the partial file is this task's file or it is not used -------------------------


def _swap_hardlink(partial: Path, victim: Path) -> None:
    os.unlink(partial)
    os.link(victim, partial)


def _swap_symlink(partial: Path, victim: Path) -> None:
    os.unlink(partial)
    os.symlink(victim, partial)


def _swap_file(partial: Path, victim: Path) -> None:
    # Another regular file of the same size, moved over the name (a new inode).
    other = partial.with_name("other")
    other.write_bytes(victim.read_bytes())
    os.replace(other, partial)


def _swap_foreign_owner(partial: Path, victim: Path) -> None:
    _swap_file(partial, victim)
    os.chown(partial, 65534, 65534)


SWAPS = {
    "hardlink": _swap_hardlink,
    "symlink": _swap_symlink,
    "other-file": _swap_file,
    "other-owner": _swap_foreign_owner,
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_partial_swapped_during_retry_wait_is_discarded_not_adopted(
    server: FaultServer, tmp_path: Path, key: str, swap: str
) -> None:
    if swap == "other-owner" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * CUT)  # as long as the committed offset: resume would fit
    dest = tmp_path / "swap.bin"
    url = server.url(f"/gen/{SIZE}?cut={CUT}&times=1&key={key}")
    keep: list[int] = []
    seen: list[Path] = []

    def tamper(partial: Path) -> None:
        seen.append(partial)
        assert partial.stat().st_size == CUT
        # What a foreign file must keep: its bytes, and (through its fd) its inode's bytes.
        keep.append(os.open(victim, os.O_RDONLY))
        SWAPS[swap](partial, victim)
        if swap in ("other-file", "other-owner"):
            os.close(keep.pop())
            keep.append(os.open(partial, os.O_RDONLY))  # the planted inode itself

    try:
        done = tampered_in_retry_wait(tmp_path, url, dest, tamper)
        assert done.row.snap.error is None, done.row.snap.error
        assert dest.read_bytes() == gen_bytes(SIZE)
        (fd,) = keep
        assert os.pread(fd, CUT + 1, 0) == b"v" * CUT  # never written into
    finally:
        for fd in keep:
            os.close(fd)
    (partial,) = seen
    assert victim.read_bytes() == b"v" * CUT
    assert not dest.is_symlink()
    st = dest.stat()
    assert st.st_uid == os.geteuid()
    assert st.st_nlink == 1
    assert not partial.exists()
    assert not os.path.lexists(partial)
    # Started over from 0: the resumed request would have fetched only the tail.
    assert done.row.snap.restarts == 1
    ranges = [a["range_start"] for a in done.history]
    assert ranges[0] is None, ranges
    assert ranges[-1] is None, ranges


def test_directory_swapped_for_symlink_during_retry_wait_cannot_redirect(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    real = tmp_path / "dl"
    real.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = real / "d.bin"
    url = server.url(f"/gen/{SIZE}?cut={CUT}&times=1&key={key}")
    moved = tmp_path / "dl.moved"

    def tamper(partial: Path) -> None:
        os.rename(real, moved)
        os.symlink(elsewhere, real)

    error = tampered_in_retry_wait(tmp_path, url, dest, tamper).row.snap.error
    assert isinstance(error, bgtransfer.DestinationError), error
    assert "directory" in error.message
    assert os.listdir(elsewhere) == []  # nothing written, placed or removed there
    # The task's own directory still holds its bytes, untouched by the failure's cleanup.
    [left] = os.listdir(moved)
    assert left.endswith(".bgtransfer-part")
    assert (moved / left).stat().st_size == CUT


def test_directory_replaced_by_another_directory_is_refused(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    real = tmp_path / "dl"
    real.mkdir()
    dest = real / "d.bin"
    url = server.url(f"/gen/{SIZE}?cut={CUT}&times=1&key={key}")

    def tamper(partial: Path) -> None:
        os.rename(real, tmp_path / "dl.moved")
        real.mkdir()  # same name, another inode

    error = tampered_in_retry_wait(tmp_path, url, dest, tamper).row.snap.error
    assert isinstance(error, bgtransfer.DestinationError), error
    assert os.listdir(real) == []


def test_target_directory_symlink_is_resolved_at_submit(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Symlinks in the path are followed once, when the task is made; the task records
    (and later insists on) the real directory."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    task = session.download(server.url(f"/gen/{SIZE}?key={key}"), link / "f.bin")
    assert task.path == str(real / "f.bin")
    task.wait(timeout=60)
    assert task.error is None
    assert (real / "f.bin").read_bytes() == gen_bytes(SIZE)


def test_sha256_is_decided_on_the_bytes_on_disk(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Bytes changed in the partial file behind the engine's back (same inode, so the
    identity holds) are caught: the digest is of the file, not of what was received."""
    dest = tmp_path / "h.bin"
    url = server.url(f"/gen/{SIZE}?cut={CUT}&times=1&key={key}")

    def tamper(partial: Path) -> None:
        fd = os.open(partial, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\0" * 4096, 1000)
        finally:
            os.close(fd)

    done = tampered_in_retry_wait(tmp_path, url, dest, tamper, sha256=gen_sha256(SIZE))
    error = done.row.snap.error
    # Two checks read the file back, and either may be first: the Repr-Digest tail hasher
    # (a worker thread lagging behind the writes; if it had not yet read the tampered
    # prefix when the retry began, it catches it and the download starts over), or the
    # seal's sha256 of the finished file. Which one depends on thread timing (checkpoints
    # no longer pause the loop for their fdatasync): each outcome is checked in full.
    if error is None:
        outcomes = [h["outcome"] for h in done.history]
        assert any(o.startswith("checksum mismatch") for o in outcomes), done.history
        assert done.history[-1]["range_start"] is None, done.history  # fetched again
        assert dest.read_bytes() == gen_bytes(SIZE)
        return
    assert isinstance(error, bgtransfer.IntegrityError), error
    assert "sha256" in error.message
    assert not dest.exists()


def test_sha256_of_a_good_segmented_download_passes(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "s.bin"
    size = 4 << 20
    task = session.download(
        server.url(f"/gen/{size}?key={key}"), dest, sha256=gen_sha256(size), segments=4
    )
    task.wait(timeout=60)
    assert task.error is None
    assert dest.read_bytes() == gen_bytes(size)


# -- item 8: the finished file's mode ---------------------------------------------------------


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_finished_file_mode_follows_the_umask(
    server: FaultServer,
    tmp_path: Path,
    key: str,
    umask: Callable[[int], None],
    mask: int,
    mode: int,
) -> None:
    umask(mask)
    dest = tmp_path / "m.bin"
    with bgtransfer.Session("m", home=tmp_path / "home", background=False) as s:
        task = s.download(server.url(f"/gen/{SIZE}?rate=2000000&key={key}"), dest)
        partial = Path(s._async._engine_or_raise().get(task.id).partial)
        wait_for(partial.exists, "the partial file")
        assert stat.S_IMODE(partial.stat().st_mode) == 0o600  # private until placed
        task.wait(timeout=60)
    assert task.error is None
    assert stat.S_IMODE(dest.stat().st_mode) == mode


def test_mode_is_the_submitters_umask_not_the_engines(
    server: FaultServer, tmp_path: Path, key: str, umask: Callable[[int], None]
) -> None:
    """The umask travels with the task: what the engine's process has later does not count."""
    umask(0o022)
    dest = tmp_path / "u.bin"
    with bgtransfer.Session("u", home=tmp_path / "home", background=False) as s:
        task = s.download(server.url(f"/gen/{SIZE}?rate=2000000&key={key}"), dest)
        umask(0o077)
        task.wait(timeout=60)
    assert task.error is None
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_overwrite_gets_the_new_mode(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "o.bin"
    dest.write_bytes(b"old")
    dest.chmod(0o600)
    old = os.umask(0o022)
    try:
        task = session.download(server.url(f"/gen/{SIZE}?key={key}"), dest, overwrite=True)
    finally:
        os.umask(old)
    task.wait(timeout=60)
    assert task.error is None
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_bad_umask_is_refused(session: bgtransfer.Session, tmp_path: Path) -> None:
    from bgtransfer._tasks import build_row

    with pytest.raises(bgtransfer.InvalidRequest, match="umask"):
        build_row("s", "http://127.0.0.1:1/x", tmp_path / "x", background=False, umask=0o1000)
    with pytest.raises(bgtransfer.InvalidRequest, match="umask"):
        build_row("s", "http://127.0.0.1:1/x", tmp_path / "x", background=False, umask="022")


# -- item 9: relative paths -------------------------------------------------------------------


def test_relative_path_is_resolved_against_the_callers_cwd(
    session: bgtransfer.Session,
    server: FaultServer,
    tmp_path: Path,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    task = session.download(server.url(f"/gen/{SIZE}?key={key}"), "rel.bin")
    monkeypatch.chdir(tmp_path)  # where the caller is later does not matter
    task.wait(timeout=60)
    assert task.error is None
    assert task.path == str(work / "rel.bin")
    assert (work / "rel.bin").read_bytes() == gen_bytes(SIZE)


# -- item 16: the history ---------------------------------------------------------------------


def test_history_shows_the_request_in_flight(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str
) -> None:
    dest = tmp_path / "hf.bin"
    task = session.download(server.url(f"/gen/{4 << 20}?rate=1000000&key={key}"), dest)
    wait_for(lambda: task.bytes_received > 0, "bytes")
    store = session._async._engine_or_raise().store
    wait_for(lambda: bool(store.attempts(task.id)), "the open attempt on record")
    [open_] = store.attempts(task.id)
    assert open_.outcome == "in progress"
    assert open_.ended_at is None
    task.cancel()
    [row] = task.history()
    assert row["ended_at"] is not None
    assert row["outcome"] != "in progress"


def test_upload_attempts_are_in_the_history(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(gen_bytes(SIZE))
    task = session.upload(src, server.url("/upload/h1"))
    task.wait(timeout=60)
    assert task.error is None
    [row] = task.history()
    assert row["status"] in (200, 201, 204)
    assert row["bytes"] == SIZE
    assert row["outcome"] == "completed"
    assert row["ended_at"] is not None


def test_every_upload_attempt_is_in_the_history(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path
) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(gen_bytes(SIZE))
    # Two answers of 503, then success: three attempts.
    task = session.upload(
        src, server.url("/upload/h2?status=503&times=2"), retry_wait=0.05, max_retry_wait=0.1
    )
    task.wait(timeout=60)
    assert task.error is None, task.error
    rows = task.history()
    assert [r["status"] for r in rows] == [503, 503, rows[-1]["status"]], rows
    assert rows[-1]["outcome"] == "completed"
    assert all(r["ended_at"] is not None for r in rows)
