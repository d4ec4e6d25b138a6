#!/usr/bin/env python3
"""The TLS body path alone: aiohttp's stream against ``_rawbody.take_over(resp, tls=True)``.

    .venv/bin/python benchmarks/tls_body.py [--mib 1024] [--rounds 5]

Starts the runner's nginx with TLS 1.3 and a CA made for the run, then alternates two child
processes per round: one reads a body with ``iter_chunked(1 MiB)``, the other takes the body
over and reads it with ``loop.sock_recv_into`` into one 1 MiB buffer, as the engine's
``_raw_stream`` does. Nothing is written to disk, so this isolates the network + TLS + copy
cost from the file system's noise. Prints per mode the medians of MB/s and CPU seconds (the
child's user + sys, interpreter start and handshake included) and the reads per body.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proc import Nginx, make_pki

CHILD = r"""
import asyncio, json, os, resource, ssl, sys, time
import aiohttp
from bgtransfer._engine._rawbody import take_over

url, cafile, mode, dest = sys.argv[1:5]
out = None if dest == "-" else os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

async def main():
    ctx = ssl.create_default_context(cafile=cafile)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, ssl=ctx) as resp:
            total = reads = 0
            raw = take_over(resp, tls=True) if mode != "aiohttp" else None
            if raw is None:
                assert mode == "aiohttp", "the fast path did not apply"
                async for chunk in resp.content.iter_chunked(1 << 20):
                    if out is not None:
                        os.write(out, chunk)
                    total += len(chunk)
                    reads += 1
                return total, reads
            if mode == "pump":
                total, left = len(raw.buffered), raw.remaining
                try:
                    while left:
                        chunk = await raw.read(min(1 << 20, left))
                        if not chunk:
                            raise ConnectionError("body cut short")
                        if out is not None:
                            os.write(out, chunk)
                        total += len(chunk)
                        left -= len(chunk)
                        reads += 1
                finally:
                    raw.close()
                return total, reads
            loop = asyncio.get_running_loop()
            buf = memoryview(bytearray(1 << 20))
            total, left = len(raw.buffered), raw.remaining
            try:
                while left:
                    n = await loop.sock_recv_into(raw.sock, buf[: min(len(buf), left)])
                    if n == 0:
                        raise ConnectionError("body cut short")
                    if out is not None:
                        os.write(out, buf[:n])
                    total += n
                    left -= n
                    reads += 1
            finally:
                raw.close()
            return total, reads

t0 = time.perf_counter()
total, reads = asyncio.run(main())
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"bytes": total, "reads": reads, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=1024, help="body size (default 1024)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument(
        "--modes",
        default="aiohttp,fast,pump",
        help="aiohttp: iter_chunked; fast: sock_recv_into on the loop; pump: TLSBody.read, "
        "decrypting in a thread (the engine's path) (default: all three)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="also write each body to a new file in DIR (removed and `sync` run before each "
        "run); default: nothing is written",
    )
    p.add_argument("--url", help="an HTTPS URL of a --mib MiB body instead of our own nginx")
    p.add_argument("--cafile", help="the CA that signed --url's certificate")
    a = p.parse_args(argv)
    modes = a.modes.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bgttls-"))
    os.chmod(tmp, 0o755)
    nginx = None
    try:
        if a.url:
            url, cafile = a.url, a.cafile
        else:
            data = tmp / "data"
            data.mkdir(mode=0o755)
            with open(data / "body.bin", "wb") as f:
                f.writelines(os.urandom(1 << 20) for _ in range(a.mib))
            os.chmod(data / "body.bin", 0o644)
            pki = make_pki(tmp / "pki")
            nginx = Nginx(shutil.which("nginx") or "/usr/sbin/nginx", tmp / "nginx", data, pki=pki)
            nginx.start()
            url, cafile = nginx.url("body.bin", tls=True), str(pki.ca)
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for rnd in range(a.rounds):
            for mode in modes[rnd % len(modes) :] + modes[: rnd % len(modes)]:
                dest = "-"
                if a.out:
                    dest = os.path.join(a.out, "tls_body.out")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(dest)
                    os.sync()
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, url, cafile, mode, dest],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                if rec["bytes"] != a.mib << 20:
                    raise RuntimeError(f"{mode}: {rec['bytes']} bytes, not {a.mib << 20}")
                runs[mode].append(rec)
                print(
                    f"round {rnd} {mode:8} {rec['bytes'] / rec['wall'] / 1e6:6.0f} MB/s  "
                    f"cpu {rec['cpu']:.2f} s  reads {rec['reads']}",
                    file=sys.stderr,
                )
        if a.out:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(a.out, "tls_body.out"))
        print(f"{a.mib} MiB over TLS 1.3, {a.rounds} rounds, loadavg {os.getloadavg()[0]:.2f}")
        for mode, rs in runs.items():
            mbps = [r["bytes"] / r["wall"] / 1e6 for r in rs]
            cpu = [r["cpu"] for r in rs]
            print(
                f"{mode:8} MB/s {statistics.median(mbps):6.0f} ({min(mbps):.0f}-{max(mbps):.0f})"
                f"  CPU s {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f})"
                f"  reads/body {statistics.median([r['reads'] for r in rs]):.0f}"
            )
        return 0
    finally:
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
