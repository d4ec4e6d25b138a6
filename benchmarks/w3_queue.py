"""Workload 3: N queued tasks in the daemon (behind a server that never answers).

Measures the daemon's RSS with the queue full, the time to submit all N with
`Session.download_many`, and the latency of one `ls` page and one `show`, through the API and
as whole commands. Run: .venv/bin/python benchmarks/w3_queue.py [N]   (default 100000)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bgtransfer
from bgtransfer._client import DaemonClient
from bgtransfer.testing import FaultServer

BATCH = 5000


def command(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return time.monotonic() - t0, r


async def api_latency(home: Path, task_id: str) -> tuple[float, float]:
    client = DaemonClient(str(home))
    try:
        t0 = time.monotonic()
        await client.call("GET", "/v1/tasks", params={"limit": "100"})
        page = time.monotonic() - t0
        t0 = time.monotonic()
        await client.call("GET", "/v1/tasks", params={"prefix": task_id[:8]})
        return page, time.monotonic() - t0
    finally:
        await client.close()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with FaultServer() as srv, tempfile.TemporaryDirectory(prefix="bgt-w3-") as tmp:
        home, out = Path(tmp) / "home", Path(tmp) / "out"
        out.mkdir()
        url = srv.url("/gen/100?stall_headers=600")
        with bgtransfer.Session("w3", home=home) as s:
            t0 = time.monotonic()
            for start in range(0, n, BATCH):
                items = [
                    {"url": url, "path": out / f"f{i}"} for i in range(start, min(n, start + BATCH))
                ]
                s.download_many(items)
            submit = time.monotonic() - t0
        pid = int((home / "daemon.lock").read_text())
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        mem = {
            ln.split(":")[0]: ln.split()[1] + " kB"
            for ln in status
            if ln.startswith(("VmRSS", "VmHWM"))
        }
        ls_s, r = command(home, "ls", "--json", "--limit", "100")
        first = json.loads(r.stdout)[0]["id"]
        show_s, _ = command(home, "show", first[:8], "--json")
        page_api, show_api = asyncio.run(api_latency(home, first))
        result: dict[str, Any] = {
            "tasks": n,
            "submit_s": round(submit, 2),
            "daemon_memory": mem,
            "ls_page_api_s": round(page_api, 4),
            "show_api_s": round(show_api, 4),
            "ls_page_command_s": round(ls_s, 3),
            "show_command_s": round(show_s, 3),
        }
        print(json.dumps(result, indent=2))
        command(home, "daemon", "stop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
