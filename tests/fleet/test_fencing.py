"""The engine on a PostgreSQL store under a claim: every commit carries the claim's
generation; once another worker claims the task, the next commit is refused in the same
statement and the engine stops the task at once, touching neither its file nor the store
again (a zombie). Also the on-disk half: a takeover resumes into a fresh inode."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bgtransfer._engine._engine import Engine
from bgtransfer._engine._takeover import copy_prefix, generation_partial, localize, take_over
from bgtransfer._store._base import Store
from bgtransfer._store._postgres import PostgresStore
from bgtransfer.testing import FaultServer
from tests.fleet.fleet import rows_for


class Feeder:
    """The engine's claims feeder (what a Worker is to it), recording what it hears."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lost_ids: list[str] = []
        self.settled_ids: list[tuple[str, str]] = []

    def open_store(self) -> Store:
        return PostgresStore(self.url)

    def feed(self) -> None:
        pass  # tasks come from the test's claims only

    def settled(self, task_id: str, phase_value: str) -> None:
        self.settled_ids.append((task_id, phase_value))

    def lost(self, task_id: str) -> None:
        self.lost_ids.append(task_id)


def _size(path: Path) -> int:
    return path.stat().st_size


async def _until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_refused_commit_makes_the_engine_a_zombie(
    pg: PostgresStore, pg_url: str, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.add(f"fence-{key}", os.urandom(2_000_000)) + "?rate=200000"
    (row,) = rows_for([url], tmp_path)
    pg.insert(row)
    (claim,) = pg.claim("zombie", 30.0)
    feeder = Feeder(pg_url)
    (tmp_path / "home").mkdir(mode=0o700)
    partial = Path(row.partial)

    async def main() -> None:
        engine = Engine(PostgresStore(pg_url), str(tmp_path / "home"), background=True,
                        claims=feeder)  # fmt: skip
        await engine.start()
        try:
            engine.admit_claimed(claim.row, claim.token)
            await _until(lambda: (pg.get(row.id) or row).snap.offset > 0, 20)
            # Another worker takes it over (as if the lease had run out).
            (new,) = pg.claim("w2", 30.0, now=time.time() + 60)
            assert new.token == claim.token + 1
            before = pg.get(row.id)
            assert before is not None
            cursor = pg.last_cursor()
            await _until(lambda: feeder.lost_ids == [row.id], 5)  # its next checkpoint
            size = _size(partial)
            await asyncio.sleep(1.5)  # a zombie that went on would write and commit here
            assert _size(partial) == size
            assert pg.get(row.id) == before
            assert pg.last_cursor() == cursor
            assert pg.lease(row.id) == ("w2", pytest.approx(time.time() + 90, abs=5), new.token)
            assert engine.get(row.id).snap.offset == before.snap.offset  # from the store
        finally:
            await engine.close()
            engine.store.close()
        assert pg.get(row.id) == before  # closing did not write either

    asyncio.run(main())


def test_a_takeover_resumes_into_a_fresh_inode_with_the_committed_prefix(
    pg: PostgresStore, server: FaultServer, tmp_path: Path
) -> None:
    (row,) = rows_for(["http://h.test/x"], tmp_path)
    # The old holder's file: 1000 committed bytes, 500 more it wrote after its checkpoint.
    os.makedirs(os.path.dirname(row.partial), exist_ok=True)
    fd = os.open(row.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"a" * 1500)
    st, dst = os.fstat(fd), os.stat(os.path.dirname(row.partial))
    row.snap.partial_id = (dst.st_dev, dst.st_ino, st.st_dev, st.st_ino, st.st_uid)
    row.snap.offset = 1000
    moved, old = take_over(row, 7)
    assert old == row.partial
    assert moved.partial == generation_partial(row.partial, 7)
    assert moved.partial.endswith(".g7.bgtransfer-part")
    assert Path(moved.partial).read_bytes() == b"a" * 1000  # the committed prefix only
    new_st = os.stat(moved.partial)
    assert new_st.st_ino != st.st_ino
    assert moved.snap.partial_id == (dst.st_dev, dst.st_ino, new_st.st_dev, new_st.st_ino,
                                     new_st.st_uid)  # fmt: skip
    # The zombie's descriptor writes into its own inode, never into the new file.
    os.write(fd, b"Z" * 100)
    os.close(fd)
    assert Path(moved.partial).read_bytes() == b"a" * 1000
    # A later takeover names the next generation from the base name, not a chain.
    assert generation_partial(moved.partial, 8) == generation_partial(row.partial, 8)


def test_copy_prefix_copies_exactly_the_prefix(tmp_path: Path) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    dst.write_bytes(b"")
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
    try:
        how = copy_prefix(s, d, (2 << 20) + 17)
    finally:
        os.close(s)
        os.close(d)
    assert how in ("reflink", "copy_file_range", "copy")
    assert dst.read_bytes() == data[: (2 << 20) + 17]


def test_a_task_begun_on_another_host_is_re_anchored_by_inode(tmp_path: Path) -> None:
    (row,) = rows_for(["http://h.test/x"], tmp_path)
    Path(row.partial).write_bytes(b"p" * 10)
    d, f = os.stat(tmp_path), os.stat(row.partial)
    # Another host saw the same directory and file under another device number (NFS).
    row.snap.partial_id = (d.st_dev + 7, d.st_ino, f.st_dev + 7, f.st_ino, f.st_uid)
    here = localize(row)
    assert here.snap.partial_id == (d.st_dev, d.st_ino, f.st_dev, f.st_ino, f.st_uid)
    assert row.snap.partial_id[0] == d.st_dev + 7  # the claimed row itself is not changed
    # Another directory (another inode) is not this task's: left as recorded (refused later).
    row.snap.partial_id = (d.st_dev + 7, d.st_ino + 1, f.st_dev, f.st_ino, f.st_uid)
    assert localize(row).snap.partial_id == row.snap.partial_id
    # Another file under the name (another inode): the directory is re-anchored, not the file.
    row.snap.partial_id = (d.st_dev + 7, d.st_ino, f.st_dev + 7, f.st_ino + 1, f.st_uid)
    assert localize(row).snap.partial_id == (d.st_dev, d.st_ino)
