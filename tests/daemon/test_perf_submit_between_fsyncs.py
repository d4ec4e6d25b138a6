"""A submit committed by the group commit's writer thread waits for one file fsync at most,
not for every file of the batch being synced (issue 19: the plain loop waits for each
``download()`` answer while sixteen small files finish beside it).

The writer's slow fsync is a FIFO: opening one to fsync it blocks until a writer opens it
too, so the test decides when each "fsync" ends (a FIFO cannot be fsynced: that save fails
with DestinationError, which is not what is tested here).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

from bgtransfer._engine._commit import Committer, Save
from bgtransfer._exceptions import DestinationError
from bgtransfer._options import DownloadOptions
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import download_row


def _release(fifo: Path, deadline: float) -> None:
    """Let the writer thread's open() of ``fifo`` return (it is waiting for a writer)."""
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as exc:  # ENXIO: the thread has not opened it yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_submit_is_committed_between_the_fsyncs_of_a_batch(tmp_path: Path) -> None:
    db = str(tmp_path / "s.sqlite3")
    SQLiteStore(db).close()
    busy, first, second = tmp_path / "fifo0", tmp_path / "fifo1", tmp_path / "fifo2"
    for fifo in (busy, first, second):
        os.mkfifo(fifo)
    row = download_row(
        "s", "http://127.0.0.1:9/f", str(tmp_path / "f"), DownloadOptions(), background=True
    )

    async def go() -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 30
        committer = Committer(db)
        try:
            # The writer blocks on ``busy`` while two saves queue up behind it: its next
            # batch has two files to sync, the FIFOs ``first`` and ``second``.
            held = committer.submit(Save("z", None, time.time(), sync_file=str(busy)))
            saved = committer.submit(Save("t", None, time.time(), sync_file=str(first)))
            also = committer.submit(Save("u", None, time.time(), sync_file=str(second)))
            await loop.run_in_executor(None, _release, busy, deadline)
            await asyncio.sleep(0.2)  # the writer takes the batch and blocks on ``first``
            inserted = committer.insert([row])
            await loop.run_in_executor(None, _release, first, deadline)
            # The writer now stands before ``second``: the submit must be stored already,
            # while its batch is still being synced.
            async with asyncio.timeout(20):
                await inserted
            assert not also.done()
            await loop.run_in_executor(None, _release, second, deadline)
            async with asyncio.timeout(20):
                await asyncio.wait([held, saved, also])
            # A FIFO cannot be fsynced: each save fails alone, typed (not the point here).
            assert all(isinstance(f.exception(), DestinationError) for f in (held, saved, also))
        finally:
            # Whatever happened, no open of a FIFO may block the writer any more (O_RDWR
            # never blocks on Linux and counts as the writer its open waits for).
            keep = [os.open(f, os.O_RDWR | os.O_NONBLOCK) for f in (busy, first, second)]
            try:
                await committer.close()
            finally:
                for fd in keep:
                    os.close(fd)

    asyncio.run(go())
    store = SQLiteStore(db)
    try:
        assert store.get(row.id) is not None
    finally:
        store.close()
