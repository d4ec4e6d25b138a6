"""Ordering audit: the durability order, read off the real system calls with strace.

R1  no committed offset names bytes of the partial file that are not yet fsynced (each
    snapshot the store writes is announced by the audit's sitecustomize, in order with the
    file's writes and fsyncs; with group commit the WAL fsync may land while the loop already
    writes past the committed offset, which is safe, so a bare "no WAL fsync while dirty"
    would be a proxy that fails on correct code);
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
AUDIT_SITE = str(Path(__file__).with_name("_audit"))
SYSCALLS = (
    "openat,write,pwrite64,lseek,ftruncate,fsync,fdatasync,"
    "link,linkat,rename,renameat,renameat2,unlink,unlinkat"
)
# -s: the announcements carry a path; the data of other writes is not needed.
STRACE = ["strace", "-f", "-qq", "-y", "-s", "4096", "-e", f"trace={SYSCALLS}"]
FD_CALL = re.compile(r"^(?:\d+ +)?(\w+)\((\d+)<([^>]*)>")
RESULT = re.compile(r"= (-?\d+)(?:<([^>]*)>)?$")
RESUMED = re.compile(r"^(?:(\d+) +)?<\.\.\. (\w+) resumed>")
PID = re.compile(r"^(\d+) ")
ANNOUNCE = re.compile(r'"AUDIT-SAVE (\d+) ([^"]+)"')
# link/rename by name, or relative to a directory descriptor (strace -y prints its path).
PATH_CALL = re.compile(
    r"^(?:\d+ +)?(linkat|renameat2?|link|rename)\("
    r'(?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]+)", '
    r'(?:(?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )?"([^"]+)"'
)
UNLINK = re.compile(r'^(?:\d+ +)?(unlinkat|unlink)\((?:[^,]+, )?"([^"]+)"')
PART = ".bgtransfer-part"

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


def audit_env() -> dict[str, str]:
    """The environment of a traced process: the announcing sitecustomize first on the path."""
    path = os.pathsep.join([AUDIT_SITE, *sys.path])
    return {**os.environ, "PYTHONPATH": path, "BGTRANSFER_AUDIT": "1"}


def trace(tmp_path: Path, url: str, dest: Path) -> list[str]:
    log = tmp_path / "strace.log"
    cmd = [*STRACE, "-o", str(log)]
    cmd += [sys.executable, CHILD, str(tmp_path / "home"), url, str(dest)]
    subprocess.run(cmd, check=True, env=audit_env(), timeout=120, capture_output=True)
    return log.read_text().splitlines()


class _Partials:
    """What strace shows of the partial files: written extent, and the extent made durable.

    A call strace splits (``<unfinished ...>`` / ``<... resumed>``) counts conservatively: a
    write at its end, a sync as covering only writes that had ended before it began.
    """

    def __init__(self) -> None:
        self.pos: dict[tuple[int, str], int] = {}
        self.extent: dict[str, int] = {}
        self.synced: dict[str, int] = {}
        # pid -> (call, fd, path, extra, extent when a sync began)
        self.open_calls: dict[str, tuple[str, int, str, int, int]] = {}

    def start(self, pid: str, call: str, fd: int, path: str, line: str) -> None:
        extra = 0
        if call == "pwrite64":
            m = re.search(r", (\d+)\) = |, (\d+) <unfinished", line)
            extra = int(next(g for g in m.groups() if g)) if m else 0
        if call == "ftruncate":
            m = re.search(r"\(\d+<[^>]*>, (\d+)\)", line)
            extra = int(m.group(1)) if m else 0
        self.open_calls[pid] = (call, fd, path, extra, self.extent.get(path, 0))

    def end(self, pid: str, result: int, ret_path: str | None) -> str | None:
        """A call finished; returns "sync" when it made its file durable up to a point."""
        if pid not in self.open_calls:
            return None
        call, fd, path, extra, extent_at_start = self.open_calls.pop(pid)
        if result < 0:
            return None
        if call == "openat" and ret_path is not None:
            self.pos[(result, ret_path)] = 0
        elif call == "lseek":
            self.pos[(fd, path)] = result
        elif call == "write":
            at = self.pos.get((fd, path), 0) + result
            self.pos[(fd, path)] = at
            self.extent[path] = max(self.extent.get(path, 0), at)
        elif call == "pwrite64":
            self.extent[path] = max(self.extent.get(path, 0), extra + result)
        elif call == "ftruncate":
            self.extent[path] = min(self.extent.get(path, 0), extra)
            self.synced[path] = min(self.synced.get(path, 0), extra)
        elif call in ("fsync", "fdatasync"):
            self.synced[path] = max(self.synced.get(path, 0), extent_at_start)
            return "sync"
        return None


def audit(lines: list[str], dest: Path) -> dict[str, int]:
    dirty = False
    synced_since_write = False
    placed = False
    dir_synced = False
    parts = _Partials()
    counts = {
        "part_writes": 0,
        "part_syncs": 0,
        "commits": 0,
        "saves": 0,
        "max_saved_offset": 0,
        "places": 0,
        "dir_syncs": 0,
    }
    directory = str(dest.parent)
    for line in lines:
        pid_m = PID.match(line)
        pid = pid_m.group(1) if pid_m else "0"
        announce = ANNOUNCE.search(line)
        if announce is not None:
            offset, partial = int(announce.group(1)), announce.group(2)
            durable = parts.synced.get(partial, 0)
            assert offset <= durable, (
                f"R1: offset {offset} of {partial} committed with {durable} bytes fsynced: {line}"
            )
            counts["saves"] += 1
            counts["max_saved_offset"] = max(counts["max_saved_offset"], offset)
            continue
        resumed = RESUMED.match(line)
        if resumed is not None:
            r = RESULT.search(line)
            if r is not None:
                parts.end(pid, int(r.group(1)), r.group(2))
            continue
        if line.startswith((f"{pid} openat(", "openat(")):
            if PART in line:
                parts.open_calls[pid] = ("openat", -1, "", 0, 0)
                r = RESULT.search(line)
                if r is not None:
                    parts.end(pid, int(r.group(1)), r.group(2))
            continue
        m = None if PATH_CALL.match(line) else FD_CALL.match(line)
        if m is not None:
            call, fd, path = m.group(1), int(m.group(2)), m.group(3)
            if path.endswith(PART):
                parts.start(pid, call, fd, path, line)
                r = RESULT.search(line)
                if r is not None:
                    parts.end(pid, int(r.group(1)), r.group(2))
            if path.endswith(PART) and call in ("write", "pwrite64"):
                dirty, synced_since_write = True, False
                counts["part_writes"] += 1
            elif path.endswith(PART) and call in ("fsync", "fdatasync"):
                dirty, synced_since_write = False, True
                counts["part_syncs"] += 1
            elif path.endswith("-wal") and call in ("fsync", "fdatasync"):
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
        if p is not None and src.endswith(PART) and dst == str(dest):
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
    assert counts["saves"] >= 2, counts  # the announcements were seen: R1 was checked
    assert counts["max_saved_offset"] == size, counts
    assert counts["places"] == 1, counts
    assert counts["dir_syncs"] >= 2, counts  # partial created, target placed


def test_audit_catches_a_commit_before_fsync(tmp_path: Path) -> None:
    """Negative control: the audit is not a check that cannot fail."""
    dest = tmp_path / "x"
    part = f"{tmp_path}/.x.1.bgtransfer-part"
    wal = f"{tmp_path}/home/bgtransfer.sqlite3-wal"
    bad = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 write(3</dev/null>, "AUDIT-SAVE 10 {part}", 60) = 60',
        f"1 fdatasync(6<{wal}>) = 0",
    ]
    with pytest.raises(AssertionError, match="R1"):
        audit(bad, dest)
    # Group commit: the WAL fsync of offset 10 lands while bytes past it are written. Safe.
    overlapped = [
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(5<{part}>) = 0",
        f'2 write(3</dev/null>, "AUDIT-SAVE 10 {part}", 60) = 60',
        f"1 write(5<{part}>, ...) = 10",
        f"2 fdatasync(6<{wal}>) = 0",
    ]
    assert audit(overlapped, dest)["saves"] == 1
    # A sync split by strace covers only the writes that had ended when it began.
    split = [
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(5<{part}> <unfinished ...>",
        f"3 write(5<{part}>, ...) = 10",
        "1 <... fdatasync resumed>) = 0",
        f'2 write(3</dev/null>, "AUDIT-SAVE 20 {part}", 60) = 60',
    ]
    with pytest.raises(AssertionError, match="R1"):
        audit(split, dest)
    # Writes at the position lseek set: a resumed file is not counted from 0.
    resumed = [
        f'1 openat(7<{tmp_path}>, ".x.1.bgtransfer-part", O_RDWR) = 5<{part}>',
        f"1 lseek(5<{part}>, 100, SEEK_SET) = 100",
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(5<{part}>) = 0",
        f'2 write(3</dev/null>, "AUDIT-SAVE 110 {part}", 60) = 60',
        f'2 write(3</dev/null>, "AUDIT-SAVE 111 {part}", 60) = 60',
    ]
    with pytest.raises(AssertionError, match="R1: offset 111"):
        audit(resumed, dest)
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
