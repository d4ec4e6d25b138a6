"""W1 client: one download with pypdl. Usage: pypdl_one.py URL PATH SEGMENTS."""

from __future__ import annotations

import json
import sys
import time

from pypdl import Pypdl


def main() -> int:
    url, path, segments = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t0 = time.perf_counter()
    dl = Pypdl()
    dl.start(
        url,
        path,
        multisegment=segments > 1,
        segments=max(segments, 1),
        retries=0,
        overwrite=True,
        display=False,
        block=True,
    )
    t1 = time.perf_counter()
    failed = len(dl.failed)
    print(json.dumps({"inproc_s": t1 - t0, "errors": failed}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
