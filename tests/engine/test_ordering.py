"""Ordering audit: the durability order, read off the real system calls with strace.

R1  no SQLite commit (fsync of the WAL) while the partial file has unsynced writes;
R2  the partial file is fsynced after its last write and before it gets the target name;
R3  the directory is fsynced after the link/rename, before COMPLETED is committed;
(Cancel removing the partial file is checked directly, without strace.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgtransfer.testing import FaultServer, gen_bytes

CHILD = str(Path(__file__).with_name("_child.py"))
SYSCALLS = (
    "openat,write,pwrite64,fsync,fdatasync,link,linkat,rename,renameat,renameat2,unlink,unlinkat"
)
FD_CALL = re.compile(r"^(?:\d+ +)?(\w+)\((\d+)<([^>]*)>")
# link/rename by name, or relative to a directory descriptor (strace -y prints its path).
PATH_CALL = re.compile(
    r"^(?:\d+ +)?(linkat|renameat2?|link|rename)\("
    r'(?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]+)", '
    r'(?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]+)"'
)
UNLINK = re.compile(r'^(?:\d+ +)?(unlinkat|unlink)\((?:[^,]+, )?"([^"]+)"')

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


def trace(tmp_path: Path, url: str, dest: Path) -> list[str]:
    log = tmp_path / "strace.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = ["strace", "-f", "-qq", "-y", "-e", f"trace={SYSCALLS}", "-o", str(log)]
    cmd += [sys.executable, CHILD, str(tmp_path / "home"), url, str(dest)]
    subprocess.run(cmd, check=True, env=env, timeout=120, capture_output=True)
    return log.read_text().splitlines()


def audit(lines: list[str], dest: Path) -> dict[str, int]:
    dirty = False
    synced_since_write = False
    placed = False
    dir_synced = False
    counts = {"part_writes": 0, "part_syncs": 0, "commits": 0, "places": 0, "dir_syncs": 0}
    directory = str(dest.parent)
    for line in lines:
        m = None if PATH_CALL.match(line) else FD_CALL.match(line)
        if m is not None:
            call, path = m.group(1), m.group(3)
            if path.endswith(".bgtransfer-part") and call in ("write", "pwrite64"):
                dirty, synced_since_write = True, False
                counts["part_writes"] += 1
            elif path.endswith(".bgtransfer-part") and call in ("fsync", "fdatasync"):
                dirty, synced_since_write = False, True
                counts["part_syncs"] += 1
            elif path.endswith("-wal") and call in ("fsync", "fdatasync"):
                assert not dirty, f"R1: commit with unsynced partial data: {line}"
                if placed:
                    assert dir_synced, f"R3: commit after placing but before dir fsync: {line}"
                counts["commits"] += 1
            elif path == directory and call in ("fsync", "fdatasync"):
                if placed:
                    dir_synced = True
                counts["dir_syncs"] += 1
            continue
        p = PATH_CALL.match(line)
        src = dst = ""
        if p is not None:
            src = os.path.join(p.group(2) or "", p.group(3))
            dst = os.path.join(p.group(4) or "", p.group(5))
        if p is not None and src.endswith(".bgtransfer-part") and dst == str(dest):
            assert synced_since_write, f"R2: placed before fsync: {line}"
            assert not dirty, f"R2: placed with unsynced data: {line}"
            placed, dir_synced = True, False
            counts["places"] += 1
    return counts


def test_download_follows_the_durability_order(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 6 << 20
    dest = tmp_path / "audit.bin"
    lines = trace(tmp_path, server.url(f"/gen/{size}?rate=5000000&key={key}"), dest)
    assert dest.read_bytes() == gen_bytes(size)
    counts = audit(lines, dest)
    assert counts["part_writes"] > 0
    assert counts["part_syncs"] >= 2, counts
    assert counts["commits"] >= 3, counts
    assert counts["places"] == 1, counts
    assert counts["dir_syncs"] >= 2, counts  # partial created, target placed


def test_audit_catches_a_commit_before_fsync(tmp_path: Path) -> None:
    """Negative control: the audit is not a check that cannot fail."""
    dest = tmp_path / "x"
    part = f"{tmp_path}/.x.1.bgtransfer-part"
    bad = [
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(6<{tmp_path}/home/bgtransfer.sqlite3-wal>) = 0",
    ]
    with pytest.raises(AssertionError, match="R1"):
        audit(bad, dest)
    unsynced_place = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 linkat(AT_FDCWD, "{part}", AT_FDCWD, "{dest}", 0) = 0',
    ]
    with pytest.raises(AssertionError, match="R2"):
        audit(unsynced_place, dest)
    by_directory = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 linkat(7<{tmp_path}>, ".x.1.bgtransfer-part", 7<{tmp_path}>, "x", 0) = 0',
    ]
    with pytest.raises(AssertionError, match="R2"):
        audit(by_directory, dest)
    from_cwd = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 linkat(AT_FDCWD</x>, "{part}", AT_FDCWD</x>, "{dest}", 0) = 0',
    ]
    with pytest.raises(AssertionError, match="R2"):
        audit(from_cwd, dest)


def test_cancel_unlinks_and_syncs_directory(server: FaultServer, tmp_path: Path, key: str) -> None:
    import bgtransfer

    dest = tmp_path / "c.bin"
    with bgtransfer.Session("c", home=tmp_path / "home", background=False) as s:
        t = s.download(server.url(f"/gen/{4 << 20}?rate=1000000&key={key}"), dest)
        import time

        deadline = time.monotonic() + 10
        while t.bytes_received == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        partial = s._async._engine_or_raise().get(t.id).partial
        assert os.path.exists(partial)
        t.cancel()
        assert not os.path.exists(partial)
        assert isinstance(t.error, bgtransfer.Cancelled)
