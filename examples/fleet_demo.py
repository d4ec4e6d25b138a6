"""`make fleet-demo`: fleet mode on one machine, through PostgreSQL, with a worker SIGKILLed.

1. starts a throwaway PostgreSQL (Debian's ``postgresql`` binaries, ``initdb`` into a
   temporary directory, fsync on) and the project's fault-injecting server on 127.0.0.1;
2. starts two workers: ``bgtransfer --store URL worker --name w1|w2 --lease 3``;
3. submits 12 throttled 16 MiB downloads with ``Session("demo", store=URL)``: no local
   daemon, the tasks go to PostgreSQL and the workers claim them;
4. SIGKILLs worker w1 mid-transfer: once its leases run out, w2 takes its tasks over and
   resumes them from their committed offsets (Range requests), into fresh partial files;
5. waits for all of them, checks every file's sha256, shows ``bgtransfer --store URL status``
   and stops w2 with SIGTERM.

The same two commands on your own PostgreSQL: ``bgtransfer --store URL worker`` on each host,
``bgtransfer --store URL get ...`` (or ``Session(..., store=URL)``) anywhere.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import bgtransfer
from bgtransfer.testing import FaultServer, gen_sha256
from bgtransfer.testing._postgres import find_bindir, start_postgres

FILES = 12
SIZE = 16 << 20
RATE = 4_000_000  # bytes/s per connection: slow enough to kill a worker mid-way


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def worker(url: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bgtransfer", "--store", url, "worker", "--name", name,
         "--lease", "3", "--max-active", "8"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> int:
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL is not installed: apt-get install postgresql")
        return 2
    with (
        contextmanager(start_postgres)(bindir, durable=True) as pg,
        FaultServer() as srv,
        tempfile.TemporaryDirectory(prefix="bgtransfer-fleet-demo-") as tmp,
    ):
        url = pg.url
        os.chmod(tmp, 0o755)
        print(f"step 1: PostgreSQL at {url}, test server at {srv.base_url}")
        workers = {"w1": worker(url, "w1"), "w2": worker(url, "w2")}
        print("step 2: workers w1 and w2 started (bgtransfer --store URL worker --lease 3)")
        try:
            with bgtransfer.Session("demo", store=url) as s:
                tasks = [
                    s.download(srv.url(f"/gen/{SIZE}?rate={RATE}&n={i}"), f"{tmp}/f{i}.bin")
                    for i in range(FILES)
                ]
                print(f"step 3: {FILES} downloads of {SIZE >> 20} MiB submitted to PostgreSQL")
                time.sleep(2.5)
                workers["w1"].kill()
                workers["w1"].wait(timeout=10)
                print("step 4: worker w1 SIGKILLed mid-transfer; w2 takes its tasks over")
                s.wait_all(tasks, timeout=300)
                done = [s.task(t.id) for t in tasks]
            ok = all(sha256_of(f"{tmp}/f{i}.bin") == gen_sha256(SIZE) for i in range(FILES))
            resumed = [r for r in srv.requests("/gen/") if r.range and r.range != "bytes=0-"]
            print(f"step 5: {sum(t.state.value == 'completed' for t in done)}/{FILES} "
                  f"completed, sha256 {'all right' if ok else 'WRONG'}, "
                  f"{len(resumed)} resumed with a Range request, "
                  f"restarts {sum(t.restarts for t in done)}")  # fmt: skip
            status = [sys.executable, "-m", "bgtransfer", "--store", url, "status"]
            subprocess.run(status, check=False)
        finally:
            for p in workers.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in workers.values():
                p.wait(timeout=60)
        print("fleet demo OK" if ok else "fleet demo FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
