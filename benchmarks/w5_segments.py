"""Workload 5: one big file over N connections (issue #7, aria2c -s N).

The fault server caps every connection at RATE bytes/s and answers each request after
LATENCY seconds (``stall_headers``), so one connection can reach at most RATE. Downloads
SIZE bytes with a foreground Python-API session, once per N in 1, 4, 8, and reports MB/s and
the ratio to N x RATE (the target is >= 0.8). Every result is checked with sha256.

Run: .venv/bin/python benchmarks/w5_segments.py [SIZE_MiB] [RATE_MiB_per_s]
(defaults 64 and 8). Add --json for one JSON document on stdout.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bgtransfer
from bgtransfer.testing import FaultServer, gen_sha256

LATENCY = 0.05
TARGET = 0.8


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def run_one(srv: FaultServer, tmp: Path, size: int, rate: int, n: int) -> dict[str, Any]:
    url = srv.url(f"/gen/{size}?seed={n}&rate={rate}&stall_headers={LATENCY}&key=w5-{n}")
    dest = tmp / f"w5-{n}.bin"
    expected = gen_sha256(size, seed=n)
    # max_per_host counts connections: allow all N to this one server (aria2c -x N -s N).
    with bgtransfer.Session(
        f"w5-{n}", home=tmp / f"home-{n}", background=False, max_per_host=max(6, n)
    ) as s:
        t0 = time.monotonic()
        task = s.download(url, dest, segments=n, sha256=expected)
        task.wait(timeout=size / rate * 2 + 60)
        took = time.monotonic() - t0
        error = task.error
    ok = error is None and file_sha256(dest) == expected
    dest.unlink(missing_ok=True)
    mbps = size / took / 1e6
    cap = n * rate / 1e6
    return {
        "segments": n,
        "seconds": round(took, 2),
        "MB_per_s": round(mbps, 1),
        "cap_MB_per_s": round(cap, 1),
        "ratio_to_cap": round(mbps / cap, 3),
        "requests": len([r for r in srv.requests() if r.query.get("key") == f"w5-{n}"]),
        "sha256_ok": ok,
        "error": None if error is None else str(error),
    }


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    size = int(args[0] if args else 64) << 20
    rate = int(args[1] if len(args) > 1 else 8) << 20
    with FaultServer() as srv, tempfile.TemporaryDirectory(prefix="bgt-w5-") as tmp:
        results = [run_one(srv, Path(tmp), size, rate, n) for n in (1, 4, 8)]
    if "--json" in sys.argv:
        print(json.dumps({"size": size, "rate": rate, "latency": LATENCY, "runs": results}))
    else:
        print(f"W5: {size >> 20} MiB, {rate >> 20} MiB/s per connection, {LATENCY * 1000:.0f} ms")
        print(f"{'N':>3} {'s':>7} {'MB/s':>7} {'N x cap':>8} {'ratio':>6} {'reqs':>5}  sha256")
        for r in results:
            print(
                f"{r['segments']:>3} {r['seconds']:>7.2f} {r['MB_per_s']:>7.1f} "
                f"{r['cap_MB_per_s']:>8.1f} {r['ratio_to_cap']:>6.3f} {r['requests']:>5}  "
                f"{'ok' if r['sha256_ok'] else 'MISMATCH ' + str(r['error'])}"
            )
    good = all(r["sha256_ok"] for r in results) and all(
        r["ratio_to_cap"] >= TARGET for r in results
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
