"""Checkpoints synced by the group commit's writer thread (issue 19, W1): the partial
record is described on the loop and written by that thread after its fdatasync, so a late
record must never land where it would lie (a cut file, a finished file, a newer record),
and a failed fdatasync in that thread must not be forgotten.

Real files in ``tmp_path`` and real system calls; the fault is a descriptor fdatasync
refuses (a pipe: EINVAL), the errno path a disk's EIO takes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bgtransfer._engine._files import PartialFile, SyncJob
from bgtransfer._engine._sidecar_io import ENV, RecordKeeper
from bgtransfer._exceptions import DestinationError
from bgtransfer._protocol._sidecar import XATTR_NAME, PartialRecord, sidecar_path


@dataclass
class _Holder:
    partial_id: tuple[int, ...] = ()


def _record(offset: int) -> PartialRecord:
    return PartialRecord(url="http://127.0.0.1/x", offset=offset, length=1 << 20, etag='"e"')


def _on_disk(path: str) -> int | None:
    """The offset the partial's record names (attribute first, then sidecar), or None."""
    try:
        raw = os.getxattr(path, XATTR_NAME)
    except OSError:
        try:
            with open(sidecar_path(path), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
    found: dict[str, Any] = json.loads(raw)
    return int(found["offset"])


class _Keeper:
    """A RecordKeeper over a real file whose described offset the test moves."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / ".f.bin.0123456789ab.bgtransfer-part")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.offset = 0
        self.keeper = RecordKeeper(self.path)
        self.keeper.describe = lambda: _record(self.offset)

    def open_dir(self) -> int:
        return os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)

    def write(self, prepared: Any) -> bool:
        return self.keeper.write_prepared(self.fd, prepared, self.open_dir, now=True)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(params=["auto", "sidecar"])
def keeper(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(ENV, request.param)
    k = _Keeper(tmp_path)
    yield k
    k.close()


def test_a_record_described_before_a_cut_is_never_written(keeper: _Keeper) -> None:
    keeper.offset = 100
    keeper.write(keeper.keeper.prepare())
    assert _on_disk(keeper.path) == 100
    keeper.offset = 200
    late = keeper.keeper.prepare()  # a checkpoint's, its sync still queued
    dfd = keeper.open_dir()
    try:
        keeper.keeper.clear(keeper.fd, dfd)  # a new representation: cut next
    finally:
        os.close(dfd)
    assert _on_disk(keeper.path) is None
    assert late is not None
    assert keeper.write(late) is False
    assert _on_disk(keeper.path) is None  # the old validator never lands on new bytes
    keeper.offset = 7
    keeper.write(keeper.keeper.prepare())  # described after the cut: written
    assert _on_disk(keeper.path) == 7


def test_an_older_record_never_replaces_a_newer_one(keeper: _Keeper) -> None:
    keeper.offset = 10
    older = keeper.keeper.prepare()
    keeper.offset = 20
    newer = keeper.keeper.prepare()
    assert older is not None
    assert newer is not None
    keeper.write(newer)
    assert _on_disk(keeper.path) == 20
    assert keeper.write(older) is False
    assert _on_disk(keeper.path) == 20


def test_no_record_after_the_strip_or_the_removal(keeper: _Keeper) -> None:
    keeper.offset = 5
    keeper.write(keeper.keeper.prepare())
    keeper.offset = 9
    late = keeper.keeper.prepare()
    keeper.keeper.strip(keeper.fd)  # the seal: the file may become world-readable next
    dfd = keeper.open_dir()
    try:
        keeper.keeper.remove_sidecar(dfd)  # the placement
    finally:
        os.close(dfd)
    assert _on_disk(keeper.path) is None
    assert late is not None
    assert keeper.write(late) is False
    assert _on_disk(keeper.path) is None
    assert not os.path.exists(sidecar_path(keeper.path))


def _partial(tmp_path: Path) -> PartialFile:
    part = PartialFile(str(tmp_path / ".g.bin.0123456789ab.bgtransfer-part"), _Holder())
    part.open(0)
    part.write(b"x" * 4096)
    return part


def test_sync_later_hands_over_a_duplicate_and_keeps_the_file_dirty(tmp_path: Path) -> None:
    part = _partial(tmp_path)
    try:
        job = part.sync_later()
        assert isinstance(job, SyncJob)
        assert part.dirty  # closing still syncs on the spot
        assert not part.new_entry  # the job fsyncs the new name's directory
        job.run()
        assert part.sync_error is None
    finally:
        part.close()
    assert part.sync_later() is None  # closed: nothing to hand over


def test_a_failed_checkpoint_sync_sticks_to_the_file(tmp_path: Path) -> None:
    part = _partial(tmp_path)
    real = part.fd
    r, w = os.pipe()
    try:
        part.fd = w  # fdatasync refuses a pipe: the writer thread's sync fails
        job = part.sync_later()
        assert job is not None
        with pytest.raises(DestinationError, match="cannot fsync"):
            job.run()
        part.fd = real
        assert part.sync_error is not None
        # Linux reports a writeback error once per open file: the next sync would pass
        # over lost pages. The next checkpoint and the seal refuse instead.
        with pytest.raises(DestinationError, match="cannot fsync"):
            part.sync_later()
        part.close()
        with pytest.raises(DestinationError, match="cannot fsync"):
            part.seal(expected_length=4096, sha256=None, mode=0o644)
        part.open(0)  # written again from the first byte: the loss is behind us
        assert part.sync_error is None
        part.write(b"y")
        job = part.sync_later()
        assert job is not None
        job.run()
    finally:
        os.close(r)
        os.close(w)
        part.close()


def test_synced_bytes_below_the_previous_checkpoint_leave_the_page_cache(
    tmp_path: Path,
) -> None:
    """Sequential writes: each checkpoint's job lets go of what the one before it synced
    (the newest checkpoint's bytes stay cached for a digest's tail hasher); segments and
    files read back whole at the end (``keep_cached``) keep everything."""
    part = _partial(tmp_path)  # 4096 bytes written
    try:
        jobs: list[SyncJob] = []

        def checkpoint(**kw: Any) -> SyncJob:
            job = part.sync_later(**kw)
            assert job is not None
            jobs.append(job)
            return job

        assert checkpoint()._drop is None  # nothing synced before
        part.write(b"x" * 4096)
        assert checkpoint()._drop == (0, 4096)
        part.write(b"x" * 4096)
        assert checkpoint(keep_cached=True)._drop is None
        part.write(b"x" * 4096)
        assert checkpoint()._drop == (4096, 12288)
        part.pwrite(b"y", 0)  # written out of order: no longer sequential
        assert checkpoint()._drop is None
        for job in jobs:
            job.run()  # in order, as the writer thread runs them
        with open(part.path, "rb") as f:
            data = f.read()
        assert data == b"y" + b"x" * 16383  # dropped from the cache, not from the file
    finally:
        part.close()
