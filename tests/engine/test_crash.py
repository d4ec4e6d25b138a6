"""A foreground download SIGKILLed at random moments resumes from its checkpoint, byte-exact."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import bgtransfer
from bgtransfer import TaskState
from bgtransfer.testing import FaultServer, gen_bytes

CHILD = str(Path(__file__).with_name("_child.py"))
SIZE = 8 << 20


def spawn(home: Path, url: str, dest: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, CHILD, str(home), url, str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stored(home: Path) -> tuple[str, int, str, str] | None:
    """(phase, committed offset, partial path, integrity) read through a read-only connection."""
    db = home / "bgtransfer.sqlite3"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (integrity,) = con.execute("PRAGMA integrity_check").fetchone()
        row = con.execute('SELECT phase, "offset", partial FROM tasks').fetchone()
    except sqlite3.OperationalError:
        return None  # killed before the schema existed
    finally:
        con.close()
    return None if row is None else (row[0], row[1], row[2], integrity)


def check_invariants(home: Path, dest: Path, origin: bytes) -> int:
    found = stored(home)
    if found is None:
        assert not dest.exists()
        return 0
    phase, offset, partial, integrity = found
    assert integrity == "ok"
    if phase == "done":
        assert dest.read_bytes() == origin
        return offset
    assert not dest.exists(), "target visible before the task completed"
    if os.path.exists(partial):
        data = Path(partial).read_bytes()
        assert offset <= len(data), f"committed offset {offset} > partial size {len(data)}"
        assert data[:offset] == origin[:offset], "partial prefix differs from the origin"
    else:
        assert offset == 0
    return offset


def kill_past_a_checkpoint(home: Path, url: str, dest: Path) -> None:
    """Start the download in a child and SIGKILL it a little after its first checkpoint."""
    proc = spawn(home, url, dest)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("started")
    deadline = time.monotonic() + 20
    found = None
    while time.monotonic() < deadline:
        found = stored(home)
        if found is not None and found[1] > 0:
            break
        time.sleep(0.05)
    # Some bytes past the checkpoint: the partial grows beyond the committed offset (or is
    # gone: the download finished).
    past = time.monotonic() + 5
    while found is not None and time.monotonic() < past:
        _, offset, partial, _ = found
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(partial) <= offset + (64 << 10):
                time.sleep(0.02)
                continue
        break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def test_sigkill_loop_resumes_byte_exact(server: FaultServer, tmp_path: Path, key: str) -> None:
    size = 48 << 20  # about 16 s of transfer: more than twelve kills' worth of progress
    origin = gen_bytes(size, seed=7)
    url = server.url(f"/gen/{size}?seed=7&rate=3000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    rng = random.Random(1234)
    kills, offsets = 0, []
    deadline = time.monotonic() + 120
    while kills < 12 and time.monotonic() < deadline:
        proc = spawn(home, url, dest)
        # The random delay counts from the task's start: on a loaded machine the child's
        # interpreter start alone can take longer than the whole delay.
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("started")
        time.sleep(rng.uniform(0.5, 2.5))  # checkpoints come every 1 s of transfer
        if proc.poll() is not None:
            proc.communicate(timeout=10)
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        kills += 1
        offsets.append(check_invariants(home, dest, origin))
        if dest.exists():
            break
    assert kills >= 10, f"only {kills} kills landed before the download finished"
    assert max(offsets) > 0, "no checkpoint was ever committed"
    proc = spawn(home, url, dest)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "done completed None" in out
    assert dest.read_bytes() == origin
    check_invariants(home, dest, origin)
    resumed = [r for r in server.requests("/gen/") if r.query.get("key") == key and r.range]
    assert resumed, "no attempt resumed with a Range request"


def test_later_session_sees_interrupted_task_and_resumes(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    origin = gen_bytes(SIZE, seed=8)
    url = server.url(f"/gen/{SIZE}?seed=8&rate=4000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    kill_past_a_checkpoint(home, url, dest)
    committed = check_invariants(home, dest, origin)
    assert committed > 0
    found = stored(home)
    assert found is not None
    written = os.path.getsize(found[2])
    assert written > committed
    with bgtransfer.Session("kill", home=home, background=False) as s:
        (task,) = s.tasks()
        assert task.state is TaskState.SUSPENDED
        assert "interrupted" in task.detail
        # Same boot: the bytes written after the checkpoint are kept, none fetched again.
        assert task.bytes_received == written
        task.resume()
        task.wait(timeout=60)
        assert task.error is None
    assert dest.read_bytes() == origin
    last = [r for r in server.requests("/gen/") if r.query.get("key") == key][-1]
    assert last.range == f"bytes={written}-"


def test_after_a_reboot_only_the_committed_offset_is_trusted(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Unsynced bytes may not have survived a power loss: another boot id means the partial
    file is cut back to the committed offset."""
    origin = gen_bytes(SIZE, seed=9)
    url = server.url(f"/gen/{SIZE}?seed=9&rate=4000000&key={key}")
    home, dest = tmp_path / "home", tmp_path / "out.bin"
    kill_past_a_checkpoint(home, url, dest)
    committed = check_invariants(home, dest, origin)
    found = stored(home)
    assert found is not None
    assert os.path.getsize(found[2]) > committed > 0
    # What a reboot looks like to the store: the checkpoint was taken in another boot.
    con = sqlite3.connect(home / "bgtransfer.sqlite3")
    with con:
        con.execute("UPDATE tasks SET response=json_set(response, '$.boot', 'another-boot')")
    con.close()
    with bgtransfer.Session("kill", home=home, background=False) as s:
        (task,) = s.tasks()
        assert task.bytes_received == committed
        # Cut back when the session found the task (TruncatePartial), before any request.
        assert os.path.getsize(found[2]) == committed
        task.resume()
        task.wait(timeout=60)
        assert task.error is None
    assert dest.read_bytes() == origin
    last = [r for r in server.requests("/gen/") if r.query.get("key") == key][-1]
    assert last.range == f"bytes={committed}-"


RESOURCE_CHILD = """
import sys, bgtransfer
home, url, dest = sys.argv[1:4]
with bgtransfer.Session("rt", home=home, background=False) as s:
    t = s.download(url, dest, request_timeout=0.3, resource_timeout=4.0,
                   retry_wait=0.05, max_retry_wait=0.1)
    print("started", flush=True)
    t.wait(timeout=60)
"""


def test_resource_timeout_survives_a_process_restart(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Resource time used before a SIGKILL still counts after it (and wall clock is not used)."""
    home, dest = tmp_path / "home", tmp_path / "rt.bin"
    url = server.url(f"/gen/{SIZE}?stall_headers=30&key={key}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", RESOURCE_CHILD, str(home), url, str(dest)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("started")
    time.sleep(2.8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    with bgtransfer.Session("rt", home=home, background=False) as s:
        (task,) = s.tasks()
        assert task.state is TaskState.SUSPENDED
        t0 = time.monotonic()
        task.resume()
        task.wait(timeout=30)
        took = time.monotonic() - t0
    assert isinstance(task.error, bgtransfer.TransferTimeout)
    assert "resource timeout of 4 s" in str(task.error)
    # About 2.5 s were used before the kill, so well under the full 4 s remain.
    assert took < 3.0, took
    assert not dest.exists()


DISK_FULL_CHILD = """
import resource, signal, sys, bgtransfer
home, url, dest = sys.argv[1:4]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
with bgtransfer.Session("full", home=home, background=False) as s:
    t = s.download(url, dest, retry_wait=0.05)
    import time
    deadline = time.monotonic() + 30
    while t.state is bgtransfer.TaskState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    print(t.state.value, "|", t.detail, "|", t.bytes_received, flush=True)
"""


def test_a_full_disk_suspends_the_task_and_keeps_its_bytes(
    server: FaultServer, tmp_path: Path, key: str
) -> None:
    """Row 15: EFBIG/ENOSPC is a task state (suspended, with the reason), not a retry loop."""
    size = 16 << 20
    origin = gen_bytes(size, seed=9)
    url = server.url(f"/gen/{size}?seed=9&key={key}")
    home, dest = tmp_path / "home", tmp_path / "full.bin"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(home), url, str(dest)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    state, detail, got = (x.strip() for x in r.stdout.split("|"))
    assert state == "suspended"
    assert "File too large" in detail or "No space" in detail, detail
    assert not dest.exists()
    assert (
        len([q for q in server.requests("/gen/") if q.query.get("key") == key]) == 1
    )  # no retry storm
    committed = check_invariants(home, dest, origin)
    assert 0 < committed <= 4 << 20
    assert int(got) == committed  # every byte written before the error was kept
    found = stored(home)
    assert found is not None
    # The last write got part of its chunk in before the limit: those bytes are sound too.
    written = os.path.getsize(found[2])
    assert committed <= written <= 4 << 20
    with bgtransfer.Session("full", home=home, background=False) as s:
        (task,) = s.tasks()
        task.resume()  # space is back (no limit here): it continues where the file ends
        task.wait(timeout=60)
        assert task.error is None
    assert dest.read_bytes() == origin
    last = [q for q in server.requests("/gen/") if q.query.get("key") == key][-1]
    assert last.range == f"bytes={written}-"
