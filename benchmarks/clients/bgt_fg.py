"""W1 client: one download with a foreground session (the engine runs in this process).

Usage: bgt_fg.py URL PATH HOME. Prints one JSON line: the in-process seconds and the error.
"""

from __future__ import annotations

import json
import sys
import time

import bgtransfer


def main() -> int:
    url, path, home = sys.argv[1:4]
    t0 = time.perf_counter()
    with bgtransfer.Session("bench.fg", home=home, background=False) as s:
        task = s.download(url, path).wait(timeout=900)
        t1 = time.perf_counter()
        error = task.error
    print(json.dumps({"inproc_s": t1 - t0, "error": None if error is None else str(error)}))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
