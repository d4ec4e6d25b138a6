"""`make demo`: a background download that survives dropped connections and a SIGKILLed daemon.

1. starts the project's fault-injecting server on 127.0.0.1: a 256 MiB file, throttled so
   that you can watch, whose connection is cut mid-body three times;
2. runs `bgtransfer get URL -o big.iso --sha256 ...`: the per-home daemon starts on demand
   and carries the download; the command shows its progress bar;
3. SIGKILLs the daemon mid-way; `get` starts it again and the daemon resumes the task from its
   last checkpoint with a Range request;
4. `get` exits 0 once the file is complete and its sha256 verified; the demo then shows every
   request the server saw.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
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


def main() -> int:
    with FaultServer() as srv, tempfile.TemporaryDirectory(prefix="bgtransfer-demo-") as tmp:
        home, dest = os.path.join(tmp, "home"), os.path.join(tmp, "big.iso")
        url = srv.url(f"/gen/{SIZE}?rate=100000000&cut=60000000&times=3")
        print(f"server {srv.base_url}: {SIZE // MiB} MiB, throttled, connection cut 3 times")
        print(f"step 1: bgtransfer get {url} -o big.iso --sha256 ...")
        get = subprocess.Popen(
            [sys.executable, "-m", "bgtransfer", "--home", home, "get", url, "-o", dest,
             "--sha256", gen_sha256(SIZE)]
        )  # fmt: skip
        deadline = time.monotonic() + 10
        pid = None
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.1)
            pid = daemon_pid(home) if os.path.exists(os.path.join(home, "daemon.lock")) else None
        time.sleep(1.5)
        assert pid is not None, "the daemon did not start"
        os.kill(pid, signal.SIGKILL)
        print(f"\nstep 2: daemon {pid} SIGKILLed mid-transfer; `get` starts it again and goes on")
        assert not Path(dest).exists(), "a partial file must never carry the target name"
        code = get.wait(timeout=120)
        print(f"step 3: `bgtransfer get` exited {code} (0: complete, sha256 verified)")
        with bgtransfer.Session("cli", home=home) as s:
            (task,) = s.tasks()
            print(f"  task {task.id[:8]}: {task.state.value}, restarts={task.restarts}, "
                  f"attempts={task.attempts}, new daemon pid {daemon_pid(home)}")  # fmt: skip
        print("requests the server saw:")
        for r in srv.requests("/gen/"):
            print(f"  GET Range={r.range or '-':<18} If-Range={r.if_range or '-'}")
        cli(["--home", home, "daemon", "stop"])
        ok = code == 0 and Path(dest).stat().st_size == SIZE
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
