"""W2 client, asyncio flavour: submit with up to N requests in flight, then wait for all.

Usage: bgt_many_async.py LIST HOME N, LIST holding 'URL<TAB>PATH' lines. Shows how much of
the sync client's time is its one-at-a-time round trips and how much the daemon's own work.
Prints one JSON line like bgt_many.py.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _report import report  # a sibling: scripts run with their own folder on sys.path

import bgtransfer


def read_list(list_file: str) -> list[list[str]]:
    with open(list_file) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


async def main(pairs: list[list[str]], home: str, n: int) -> int:
    sem = asyncio.Semaphore(n)
    t_open = time.perf_counter()
    async with bgtransfer.AsyncSession("bench.many-async", home=home) as s:

        async def submit(url: str, path: str) -> bgtransfer.AsyncTask:
            async with sem:
                return await s.download(url, path)

        async def wait(task: bgtransfer.AsyncTask) -> None:
            async with sem:
                await task.wait(timeout=900)

        t0 = time.perf_counter()
        tasks = await asyncio.gather(*(submit(u, p) for u, p in pairs))
        t1 = time.perf_counter()
        await asyncio.gather(*(wait(t) for t in tasks))
        t2 = time.perf_counter()
        errors = [str(t.error) for t in tasks if t.error is not None]
    return report(t_open, t0, t1, t2, errors, len(tasks))


if __name__ == "__main__":
    sys.exit(asyncio.run(main(read_list(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
