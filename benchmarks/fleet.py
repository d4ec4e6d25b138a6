"""Fleet mode on this machine: claims per second, fenced checkpoints per second, and
end-to-end small-file throughput with 1, 2 and 3 workers, with PostgreSQL's CPU share.

    .venv/bin/python benchmarks/fleet.py [--files 2000] [--size 16384] [--json]

Starts its own PostgreSQL (Debian's binaries, as tests/store/pg.py does, but with fsync ON:
durability is what is measured) and its own nginx on 127.0.0.1 serving the files; workers
are real ``python -m bgtransfer._fleet`` processes. PostgreSQL's CPU is read from /proc (utime
+ stime of every postgres process) before and after each run. Everything it starts is
stopped at the end, on errors too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bgtransfer._models import Phase  # noqa: E402
from bgtransfer._store._postgres import PostgresStore  # noqa: E402
from bgtransfer._tasks import build_row  # noqa: E402
from bgtransfer.testing._postgres import find_bindir, free_port, start_postgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    """(url, data directory) of a PostgreSQL with its default durability (fsync on)."""
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    with contextmanager(start_postgres)(bindir, durable=True) as server:
        yield server.url, os.path.join(server.root, "data")


@contextmanager
def nginx(root: Path) -> Iterator[str]:
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; "
        f"root {root}/www; }} }}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit("nginx did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def postgres_cpu(data: str) -> float:
    """CPU seconds used so far by every process of the server on ``data``."""
    pid_file = Path(data) / "postmaster.pid"
    master = int(pid_file.read_text().split()[0])
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        if pid == master:  # with the time of every backend that has exited (cutime, cstime)
            total += sum(int(f) for f in fields[11:15]) / TICK
        elif ppid == master:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fresh_schema(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        con.execute(f'CREATE SCHEMA "{name}"')
    return f"{url}?options=-csearch_path%3D{name}"


def bench_claims(url: str, data: str, n: int, threads: int, limit: int) -> dict[str, float]:
    schema = fresh_schema(url, f"claims_{threads}_{limit}")
    store = PostgresStore(schema)
    tmp = Path(tempfile.mkdtemp(prefix="bgt-claims-"))
    rows = [build_row("b", f"http://h{i % 50}.test/{i}", tmp / f"f{i}", background=True)
            for i in range(n)]  # fmt: skip
    for start in range(0, n, 1000):
        store.insert_many(rows[start : start + 1000])
    counts = [0] * threads

    def claimer(k: int) -> None:
        # Claim, then give back as done (steady state: a fleet's live leases stay about
        # workers x max_active, they do not pile up), in one transaction per batch each.
        s = PostgresStore(schema)
        try:
            while got := s.claim(f"w{k}", 60.0, limit=limit, max_per_origin=6):
                counts[k] += len(got)
                for c in got:
                    c.row.snap.phase = Phase.DONE
                    s.save(c.row.id, c.row.snap, wall_time=time.time(), fence=c.token)
                s.release_many([(c.row.id, c.token, None, True) for c in got], 60.0)
        finally:
            s.close()

    cpu0, t0 = postgres_cpu(data), time.perf_counter()
    ts = [threading.Thread(target=claimer, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, postgres_cpu(data) - cpu0
    # Fenced checkpoints: the commit a worker makes every second per running task.
    ck = [build_row("b", f"http://ck.test/{i}", tmp / f"ck{i}", background=True)
          for i in range(200)]  # fmt: skip
    store.insert_many(ck)
    claims = store.claim("ck", 60.0, limit=200)
    t1, cpu1 = time.perf_counter(), postgres_cpu(data)
    for c in claims:
        c.row.snap.offset += 1
        store.save(c.row.id, c.row.snap, wall_time=time.time(), fence=c.token)
    ck_wall, ck_cpu = time.perf_counter() - t1, postgres_cpu(data) - cpu1
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    assert sum(counts) == n, counts
    return {
        "claims_per_s": n / wall,  # each one also completed (fenced) and released
        "pg_cpu_ms_per_claim": 1000 * cpu / n,
        "checkpoints_per_s": len(claims) / ck_wall,
        "pg_cpu_ms_per_checkpoint": 1000 * ck_cpu / len(claims),
    }


def bench_fleet(url: str, data: str, base: str, files: int, workers: int,
                out: Path) -> dict[str, float]:  # fmt: skip
    schema = fresh_schema(url, f"e2e_{workers}")
    store = PostgresStore(schema)
    target = out / f"w{workers}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rows = [build_row("b", f"{base}/f{i}", target / f"f{i}", background=True)
            for i in range(files)]  # fmt: skip
    for start in range(0, files, 1000):
        store.insert_many(rows[start : start + 1000])
    cpu0, t0 = postgres_cpu(data), time.perf_counter()
    argv = [sys.executable, "-m", "bgtransfer._fleet", "--store", schema, "--max-active", "16",
            "--max-per-host", "48", "--log-level", "WARNING"]  # fmt: skip
    procs = [
        subprocess.Popen([*argv, "--name", f"b{k}"], stdin=subprocess.DEVNULL)
        for k in range(workers)
    ]
    try:
        deadline = time.monotonic() + 600
        while store.counts().get(Phase.DONE.value, 0) < files:
            if time.monotonic() > deadline:
                raise SystemExit("the fleet did not finish in 600 s")
            time.sleep(0.05)
        wall, cpu = time.perf_counter() - t0, postgres_cpu(data) - cpu0
        workers_cpu = sum(_cpu_of(p.pid) for p in procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    store.close()
    www = out.parent / "www"
    bad = [
        r.path for r in rows if Path(r.path).read_bytes() != (www / Path(r.path).name).read_bytes()
    ]
    assert not bad, bad[:3]
    return {
        "workers": workers,
        "files_per_s": files / wall,
        "seconds": wall,
        "pg_cpu_share": cpu / wall,  # cores of PostgreSQL busy on average
        "pg_cpu_ms_per_task": 1000 * cpu / files,
        "workers_cpu_share": workers_cpu / wall,  # cores the worker processes kept busy
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--claims", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bgt-fleet-bench-"))
    www = root / "www"
    www.mkdir()
    blob = os.urandom(args.size)
    for i in range(args.files):
        (www / f"f{i}").write_bytes(blob)
    os.chmod(root, 0o755)
    results: dict[str, object] = {"files": args.files, "size": args.size, "cpus": os.cpu_count()}
    try:
        with postgres() as (url, data), nginx(root) as base:
            results["claims"] = [
                {"threads": t, "limit": lim, **bench_claims(url, data, args.claims, t, lim)}
                for t, lim in ((1, 1), (3, 1), (3, 16))
            ]
            results["fleet"] = [
                bench_fleet(url, data, base, args.files, w, root / "out") for w in (1, 2, 3)
            ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"claims ({args.claims} queued tasks):")
    for c in results["claims"]:  # type: ignore[attr-defined]
        print(
            f"  threads={c['threads']} limit={c['limit']}: {c['claims_per_s']:.0f} claims/s, "
            f"{c['pg_cpu_ms_per_claim']:.3f} ms PG CPU/claim; fenced checkpoints "
            f"{c['checkpoints_per_s']:.0f}/s, {c['pg_cpu_ms_per_checkpoint']:.3f} ms PG CPU each"
        )
    print(f"end to end ({args.files} files of {args.size} B from nginx):")
    for f in results["fleet"]:  # type: ignore[attr-defined]
        share = 100 * f["workers_cpu_share"]
        print(f"  {f['workers']} worker(s): {f['files_per_s']:.0f} files/s, PostgreSQL "
              f"{100 * f['pg_cpu_share']:.0f} % of a core, {f['pg_cpu_ms_per_task']:.2f} ms "
              f"PG CPU per task, workers {share:.0f} % of a core")  # fmt: skip


if __name__ == "__main__":
    main()
