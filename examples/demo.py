"""`make demo`: a background download that survives dropped connections and a SIGKILLed daemon.

1. starts the project's fault-injecting server on 127.0.0.1: a 256 MiB file, throttled so
   that you can watch, whose connection is cut mid-body three times;
2. submits the download to a background session: the per-home daemon starts on demand and
   runs it; this script only watches;
3. SIGKILLs the daemon mid-way; the next call starts it again and it resumes the task from its
   last checkpoint with a Range request;
4. waits for completion, checks the sha256 and shows every request the server saw.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import bgtransfer
from bgtransfer.cli import main as cli
from bgtransfer.testing import FaultServer, gen_sha256

SIZE = 256 << 20
MiB = 1 << 20


def daemon_pid(home: str) -> int | None:
    path = os.path.join(home, "daemon.lock")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return int(Path(path).read_text())
    finally:
        os.close(fd)
    return None


def show(task: bgtransfer.Task, until: float) -> None:
    last = ""
    while time.monotonic() < until:
        got, total = task.bytes_received, task.bytes_expected or SIZE
        line = (
            f"  {got / MiB:7.1f} / {total / MiB:.0f} MiB {100 * got / total:5.1f} %  {task.detail}"
        )
        if line != last:
            print(f"\r{line:<96}", end="", flush=True)
            last = line
        if task.state is not bgtransfer.TaskState.RUNNING:
            break
        time.sleep(0.1)
    print()


def main() -> int:
    with FaultServer() as srv, tempfile.TemporaryDirectory(prefix="bgtransfer-demo-") as tmp:
        home, dest = os.path.join(tmp, "home"), os.path.join(tmp, "big.iso")
        url = srv.url(f"/gen/{SIZE}?rate=100000000&cut=60000000&times=3")
        print(f"server {srv.base_url}: {SIZE // MiB} MiB, throttled, connection cut 3 times")
        with bgtransfer.Session("demo", home=home, background=True) as s:
            task = s.download(url, dest, sha256=gen_sha256(SIZE), retry_wait=0.2)
            pid = daemon_pid(home)
            print(f"step 1: task {task.id[:8]} submitted; daemon pid {pid} runs it")
            show(task, time.monotonic() + 1.2)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            print(f"step 2: daemon {pid} SIGKILLed; {task.bytes_received / MiB:.1f} MiB seen")
            assert not Path(dest).exists(), "a partial file must never carry the target name"
            task.resume()  # any call starts the daemon again; it picks the task up itself
            print(f"step 3: daemon restarted (pid {daemon_pid(home)}), task {task.detail!r}")
            show(task, time.monotonic() + 120)
            task.wait()
            if task.error is not None:
                print(f"FAILED: {task.error}")
                return 1
            print(f"step 4: completed, sha256 verified ({gen_sha256(SIZE)[:16]}...)")
        print("requests the server saw:")
        for r in srv.requests("/gen/"):
            print(f"  GET Range={r.range or '-':<18} If-Range={r.if_range or '-'}")
        cli(["--home", home, "daemon", "stop"])
        ok = Path(dest).stat().st_size == SIZE
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
