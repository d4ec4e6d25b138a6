"""W2 client: many downloads with one pypdl manager, 16 at a time, one segment each.

Usage: pypdl_many.py LIST CONCURRENCY, LIST holding 'URL<TAB>PATH' lines.
"""

from __future__ import annotations

import json
import sys
import time

from pypdl import Pypdl


def main() -> int:
    list_file, concurrency = sys.argv[1], int(sys.argv[2])
    with open(list_file) as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    t0 = time.perf_counter()
    dl = Pypdl(max_concurrent=concurrency)
    dl.start(
        tasks=[{"url": url, "file_path": path} for url, path in pairs],
        multisegment=False,
        retries=0,
        overwrite=True,
        display=False,
        block=True,
    )
    t1 = time.perf_counter()
    failed = len(dl.failed)
    print(json.dumps({"window_s": t1 - t0, "count": len(pairs), "errors": failed}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
