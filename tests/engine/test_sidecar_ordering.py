"""Ordering audit of the partial record, read off the real system calls with strace.

R4  a record (the xattr, or the sidecar when it gets its name) never vouches for bytes of
    the partial file that are not yet fdatasynced: each record update comes after the data
    sync that makes its offset true;
R5  a sidecar's content is fdatasynced before the rename that gives it its name;
R6  a partial is never cut (truncated below what it holds, as for a new representation)
    while its attribute record is still on it;
R7  no record lands once the partial got its final mode (fchmod) or its final name: the
    group commit's writer thread writes a checkpoint's record after its fdatasync, so a
    late one must be dropped, not set on a finished (maybe world-readable) file;
R8  the checkpoints' data syncs run in the writer thread (the one that commits), not in
    the thread that receives and writes the body: the network does not pause for them.

The download is the same as ``test_ordering``'s (R1-R3 are checked there, on this run too).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgtransfer._protocol._sidecar import SIDECAR_SUFFIX
from bgtransfer.testing import FaultServer, gen_bytes
from tests.engine.test_ordering import (
    ANNOUNCE,
    AUDIT_SITE,
    CHILD,
    FD_CALL,
    PART,
    PATH_CALL,
    PID,
    RESULT,
    RESUMED,
    STRACE,
    SYSCALLS,
    _Partials,
    audit,
    audit_env,
)

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "strace"], capture_output=True).returncode != 0,
    reason="strace not installed",
)

RECORD_CALLS = SYSCALLS + ",fsetxattr,setxattr,fremovexattr,removexattr,fchmod"
OFFSET = re.compile(r'\\"offset\\":(\d+)')
SIDECAR_TMP = PART + SIDECAR_SUFFIX + ".tmp"
SIDECAR = PART + SIDECAR_SUFFIX


def trace(tmp_path: Path, url: str, dest: Path, mode: str, segments: int = 1) -> list[str]:
    log = tmp_path / "strace.log"
    strace = [a if not a.startswith("trace=") else f"trace={RECORD_CALLS}" for a in STRACE]
    cmd = [*strace, "-o", str(log), sys.executable, CHILD, str(tmp_path / "home"), url]
    cmd += [str(dest), str(segments)]
    env = {**audit_env(), "BGTRANSFER_PARTIAL_RECORD": mode}
    assert AUDIT_SITE in env["PYTHONPATH"]
    subprocess.run(cmd, check=True, env=env, timeout=120, capture_output=True)
    return log.read_text().splitlines()


def audit_records(lines: list[str]) -> dict[str, int]:
    """R4 and R5 over a trace; the counts say what was seen (so that a run that wrote no
    record cannot pass for one that wrote them in order)."""
    parts = _Partials()
    tmp_content: dict[str, int] = {}  # sidecar tmp path -> offset its content names
    tmp_synced: dict[str, bool] = {}
    counts = {"xattr_records": 0, "sidecar_records": 0, "max_recorded": 0, "cuts": 0}
    recorded: dict[str, bool] = {}  # partial -> an attribute record is on it
    final: set[str] = set()  # partials given their final mode or name, and those names
    for line in lines:
        pid_m = PID.match(line)
        pid = pid_m.group(1) if pid_m else "0"
        resumed = RESUMED.match(line)
        if resumed is not None:
            r = RESULT.search(line)
            if r is not None:
                parts.end(pid, int(r.group(1)), r.group(2))
            continue
        if line.startswith((f"{pid} openat(", "openat(")):
            if PART in line and not line.rstrip().endswith("-1"):
                parts.open_calls[pid] = ("openat", -1, "", 0, 0)
                r = RESULT.search(line)
                if r is not None:
                    parts.end(pid, int(r.group(1)), r.group(2))
            continue
        p = PATH_CALL.match(line)
        if p is not None:
            src = (p.group(2) or "") + "/" + p.group(3)
            dst = (p.group(4) or "") + "/" + p.group(5)
            if src.endswith(SIDECAR_TMP) and dst.endswith(SIDECAR):
                partial = dst[: -len(SIDECAR_SUFFIX)]
                assert partial not in final, f"R7: sidecar after the partial was final: {line}"
                offset = tmp_content.pop(src, -1)
                synced = tmp_synced.pop(src, False)
                assert synced, f"R5: sidecar renamed before its fdatasync: {line}"
                durable = parts.synced.get(partial, 0)
                assert 0 <= offset <= durable, (
                    f"R4: sidecar names offset {offset} with {durable} bytes fsynced: {line}"
                )
                counts["sidecar_records"] += 1
                counts["max_recorded"] = max(counts["max_recorded"], offset)
            elif src.endswith(PART) and "= -1" not in line:
                final.update((src, dst))  # placed: no record under either name from now
            continue
        m = FD_CALL.match(line)
        if m is None:
            continue
        call, fd, path = m.group(1), int(m.group(2)), m.group(3)
        if call == "fsetxattr" and path in final:
            raise AssertionError(f"R7: record set on a file already final: {line}")
        if call == "fchmod" and path.endswith(PART):
            final.add(path)
        if path.endswith(SIDECAR_TMP):
            if call == "write":
                found = OFFSET.search(line)
                tmp_content[path] = int(found.group(1)) if found else -1
                tmp_synced[path] = False
            elif call in ("fsync", "fdatasync"):
                tmp_synced[path] = True
            continue
        if not path.endswith(PART):
            continue
        if call == "fsetxattr":
            found = OFFSET.search(line)
            assert found is not None, line
            offset, durable = int(found.group(1)), parts.synced.get(path, 0)
            assert offset <= durable, (
                f"R4: record names offset {offset} with {durable} bytes fsynced: {line}"
            )
            counts["xattr_records"] += 1
            counts["max_recorded"] = max(counts["max_recorded"], offset)
            recorded[path] = True
        elif call == "fremovexattr" and "= 0" in line:
            recorded[path] = False
        elif call == "ftruncate":
            # Also a call strace splits (``<unfinished ...>``: another thread's call came
            # in between, as the writer thread's syncs now do): the cut starts here.
            size = re.search(r"\(\d+<[^>]*>, (\d+)(?:\)| <unfinished)", line)
            if size is not None and int(size.group(1)) < parts.extent.get(path, 0):
                assert not recorded.get(path), f"R6: cut with its record still on it: {line}"
                counts["cuts"] += 1
        parts.start(pid, call, fd, path, line)
        r = RESULT.search(line)
        if r is not None:
            parts.end(pid, int(r.group(1)), r.group(2))
    return counts


@pytest.mark.parametrize("mode", ["auto", "sidecar"])
def test_record_updates_follow_the_data_sync(
    server: FaultServer, tmp_path: Path, key: str, mode: str
) -> None:
    size = 8 << 20  # > 3 s: a sidecar is replaced at most once a second
    dest = tmp_path / "audit.bin"
    lines = trace(tmp_path, server.url(f"/gen/{size}?rate=2500000&key={key}"), dest, mode)
    assert dest.read_bytes() == gen_bytes(size)
    counts = audit_records(lines)
    kind = "xattr_records" if mode == "auto" else "sidecar_records"
    assert counts[kind] >= 2, counts
    assert counts["max_recorded"] > 0, counts
    assert audit(lines, dest)["places"] == 1  # R1-R3 hold with records on
    if mode == "auto":
        # The attribute is stripped before the file gets its final mode and name.
        strip = next(i for i, ln in enumerate(lines) if "removexattr(" in ln and PART in ln)
        chmod_or_place = next(
            i for i, ln in enumerate(lines) if PATH_CALL.match(ln) and ln.find(PART) >= 0
        )
        assert strip < chmod_or_place


def test_segmented_record_updates_follow_the_data_sync(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    size = 6 << 20
    dest = tmp_path / "seg.bin"
    lines = trace(tmp_path, server.url(f"/gen/{size}?rate=3000000&key={key}"), dest, "auto", 3)
    assert dest.read_bytes() == gen_bytes(size)
    assert audit_records(lines)["xattr_records"] >= 2


def test_a_restart_removes_the_record_before_cutting_the_file(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """etag_change: the retry after the cut finds another version (200 to If-Range), so the
    file is cut to 0 for new bytes: the old record must be gone first (R6)."""
    size = 6 << 20
    dest = tmp_path / "moved.bin"
    url = server.url(f"/gen/{size}?rate=3000000&cut=4000000&times=1&etag_change=1&key={key}")
    lines = trace(tmp_path, url, dest, "auto")
    assert dest.read_bytes() == gen_bytes(size, 2)
    counts = audit_records(lines)
    assert counts["cuts"] >= 1, counts
    assert counts["xattr_records"] >= 2, counts


def test_audit_catches_a_record_ahead_of_the_data(tmp_path: Path) -> None:
    """Negative control: R4 and R5 are checks that can fail."""
    part = f"{tmp_path}/.x.1.bgtransfer-part"
    ahead = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 fsetxattr(5<{part}>, "user.bgtransfer.partial", "{{\\"offset\\":10}}", 13, 0) = 0',
    ]
    with pytest.raises(AssertionError, match="R4"):
        audit_records(ahead)
    in_order = [
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(5<{part}>) = 0",
        f'1 fsetxattr(5<{part}>, "user.bgtransfer.partial", "{{\\"offset\\":10}}", 13, 0) = 0',
    ]
    assert audit_records(in_order)["xattr_records"] == 1
    tmp, side = part + SIDECAR_SUFFIX + ".tmp", part + SIDECAR_SUFFIX
    rename = (
        f'1 renameat(7<{tmp_path}>, "{Path(tmp).name}", 7<{tmp_path}>, "{Path(side).name}") = 0'
    )
    unsynced_sidecar = [
        f"1 write(5<{part}>, ...) = 10",
        f"1 fdatasync(5<{part}>) = 0",
        f'1 write(8<{tmp}>, "{{\\"offset\\":10}}", 13) = 13',
        rename,
    ]
    with pytest.raises(AssertionError, match="R5"):
        audit_records(unsynced_sidecar)
    sidecar_ahead = [
        f"1 write(5<{part}>, ...) = 10",
        f'1 write(8<{tmp}>, "{{\\"offset\\":10}}", 13) = 13',
        f"1 fdatasync(8<{tmp}>) = 0",
        rename,
    ]
    with pytest.raises(AssertionError, match="R4"):
        audit_records(sidecar_ahead)
    assert audit_records([*in_order[:2], *sidecar_ahead[1:]])["sidecar_records"] == 1
    cut_under_record = [*in_order, f"1 ftruncate(5<{part}>, 0) = 0"]
    with pytest.raises(AssertionError, match="R6"):
        audit_records(cut_under_record)
    split_cut = [
        *in_order,
        f"1 ftruncate(5<{part}>, 0 <unfinished ...>",
        "1 <... ftruncate resumed>) = 0",
    ]
    with pytest.raises(AssertionError, match="R6"):
        audit_records(split_cut)
    cleared = [*in_order, f'1 fremovexattr(5<{part}>, "user.bgtransfer.partial") = 0']
    assert audit_records([*cleared, f"1 ftruncate(5<{part}>, 0) = 0"])["cuts"] == 1


def sync_threads(lines: list[str]) -> dict[str, int]:
    """R8 over a trace: which threads fdatasync the partial. The committer is the thread
    that announces the store's saves (the audit's sitecustomize, in ``save_in_tx``); the
    receiver is the one that writes the body."""
    committer = receiver = None
    for line in lines:
        pid = PID.match(line)
        if pid is None:
            continue
        if committer is None and ANNOUNCE.search(line):
            committer = pid.group(1)
        m = FD_CALL.match(line)
        if receiver is None and m and m.group(1) == "write" and m.group(3).endswith(PART):
            receiver = pid.group(1)
    counts = {"by_committer": 0, "by_receiver": 0}
    for line in lines:
        pid, m = PID.match(line), FD_CALL.match(line)
        if pid is None or m is None or m.group(1) != "fdatasync":
            continue
        if not m.group(3).endswith(PART):
            continue
        if pid.group(1) == committer and committer != receiver:
            counts["by_committer"] += 1
        elif pid.group(1) == receiver:
            counts["by_receiver"] += 1
    return counts


def test_checkpoint_syncs_run_in_the_writer_thread(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """R8 (and R1-R7 on the same run): 8 MiB at 2.5 MB/s makes several checkpoints."""
    size = 8 << 20
    dest = tmp_path / "r8.bin"
    lines = trace(tmp_path, server.url(f"/gen/{size}?rate=2500000&key={key}"), dest, "auto")
    assert dest.read_bytes() == gen_bytes(size)
    threads = sync_threads(lines)
    assert threads["by_committer"] >= 2, threads  # every checkpoint after the first
    assert audit_records(lines)["xattr_records"] >= 2
    assert audit(lines, dest)["places"] == 1


def test_audit_catches_a_late_record_and_a_sync_on_the_loop(tmp_path: Path) -> None:
    """Negative controls: R7 and R8 are checks that can fail."""
    part = f"{tmp_path}/.x.1.bgtransfer-part"
    dest = f"{tmp_path}/x"
    record = '"user.bgtransfer.partial", "{\\"offset\\":10}", 13, 0) = 0'
    synced = [f"1 write(5<{part}>, ...) = 10", f"2 fdatasync(9<{part}>) = 0"]
    late_on_target = [
        *synced,
        f'1 linkat(7<{tmp_path}>, ".x.1.bgtransfer-part", 7<{tmp_path}>, "x", 0) = 0',
        f"2 fsetxattr(9<{dest}>, {record}",
    ]
    with pytest.raises(AssertionError, match="R7"):
        audit_records(late_on_target)
    late_after_mode = [
        *synced,
        f"1 fchmod(6<{part}>, 0644) = 0",
        f"2 fsetxattr(9<{part}>, {record}",
    ]
    with pytest.raises(AssertionError, match="R7"):
        audit_records(late_after_mode)
    tmp, side = Path(part + SIDECAR_SUFFIX + ".tmp").name, Path(part + SIDECAR_SUFFIX).name
    late_sidecar = [
        *synced,
        f"1 fchmod(6<{part}>, 0644) = 0",
        f'2 write(8<{part}{SIDECAR_SUFFIX}.tmp>, "{{\\"offset\\":10}}", 13) = 13',
        f"2 fdatasync(8<{part}{SIDECAR_SUFFIX}.tmp>) = 0",
        f'2 renameat(7<{tmp_path}>, "{tmp}", 7<{tmp_path}>, "{side}") = 0',
    ]
    with pytest.raises(AssertionError, match="R7"):
        audit_records(late_sidecar)
    in_time = [*synced, f"2 fsetxattr(9<{part}>, {record}", f"1 fchmod(6<{part}>, 0644) = 0"]
    assert audit_records(in_time)["xattr_records"] == 1
    announce = f'2 write(3</dev/null>, "AUDIT-SAVE 10 {part}", 60) = 60'
    off_loop = [f"1 write(5<{part}>, ...) = 10", f"2 fdatasync(9<{part}>) = 0", announce]
    assert sync_threads(off_loop) == {"by_committer": 1, "by_receiver": 0}
    on_loop = [f"1 write(5<{part}>, ...) = 10", f"1 fdatasync(5<{part}>) = 0", announce]
    assert sync_threads(on_loop) == {"by_committer": 0, "by_receiver": 1}
