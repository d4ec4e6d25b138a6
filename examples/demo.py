"""`make demo`: a real download that survives a dropped connection and a SIGKILL.

1. starts the project's fault-injecting server on 127.0.0.1 (a 256 MiB file whose connection
   is cut twice and which is throttled so that you can watch);
2. starts the download in a worker process and SIGKILLs that process mid-way;
3. a new session finds the task interrupted, resumes it with a Range request from its last
   checkpoint, survives the cuts, verifies the sha256 and shows every request the server saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bgtransfer
from bgtransfer.testing import FaultServer, gen_sha256

SIZE = 256 << 20
MiB = 1 << 20


def worker(home: str, url: str, dest: str) -> None:
    with bgtransfer.Session("demo", home=home, background=False) as s:
        task = s.download(url, dest, sha256=gen_sha256(SIZE), retry_wait=0.2)
        print(task.id, flush=True)
        task.wait()


def show(task: bgtransfer.Task, until: float | None = None) -> None:
    last = ""
    while task.state is bgtransfer.TaskState.RUNNING and (
        until is None or time.monotonic() < until
    ):
        got, total = task.bytes_received, task.bytes_expected or SIZE
        line = (
            f"  {got / MiB:7.1f} / {total / MiB:.0f} MiB  {100 * got / total:5.1f} %  {task.detail}"
        )
        if line != last:
            print(f"\r{line:<90}", end="", flush=True)
            last = line
        time.sleep(0.1)
    print()


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
        return 0
    with FaultServer() as srv, tempfile.TemporaryDirectory(prefix="bgtransfer-demo-") as tmp:
        home, dest = os.path.join(tmp, "home"), os.path.join(tmp, "big.iso")
        url = srv.url(f"/gen/{SIZE}?rate=120000000&cut=70000000&times=3")
        print(
            f"server: {srv.base_url}  file: {SIZE // MiB} MiB, throttled, connection cut mid-body"
        )
        print("step 1: start the download in a worker process, then SIGKILL it")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", home, url, dest],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        task_id = proc.stdout.readline().strip()
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"  worker {proc.pid} killed (task {task_id[:8]})")
        print("step 2: a new session finds the task and resumes it from its checkpoint")
        with bgtransfer.Session("demo", home=home, background=False) as s:
            task = s.task(task_id)
            print(f"  found: state={task.state.value}, {task.bytes_received / MiB:.1f} MiB kept")
            print(f"  detail: {task.detail}")
            assert not Path(dest).exists(), "the target must not exist before success"
            task.resume()
            show(task)
            task.wait()
            if task.error is not None:
                print(f"FAILED: {task.error}")
                return 1
            print(f"step 3: completed and verified (sha256 {gen_sha256(SIZE)[:16]}...)")
            print(f"  restarts={task.restarts} attempts={task.attempts}")
        print("requests the server saw:")
        for r in srv.requests("/gen/"):
            print(f"  GET Range={r.range or '-':<18} If-Range={r.if_range or '-'}")
        ok = Path(dest).stat().st_size == SIZE
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
