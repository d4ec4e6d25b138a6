"""W2 client: submit every download of a list to the daemon with one background session.

Usage: bgt_many.py LIST HOME, LIST holding 'URL<TAB>PATH' lines. Submits them all with
``Session.download()``, then waits for each; prints one JSON line with the window from the
first submit to the last completion, the submit phase alone, and the failures.
"""

from __future__ import annotations

import json
import sys
import time

import bgtransfer


def main() -> int:
    list_file, home = sys.argv[1:3]
    with open(list_file) as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    t_open = time.perf_counter()
    with bgtransfer.Session("bench.many", home=home, background=True) as s:
        t0 = time.perf_counter()
        tasks = [s.download(url, path) for url, path in pairs]
        t1 = time.perf_counter()
        for t in tasks:
            t.wait(timeout=900)
        t2 = time.perf_counter()
        errors = [str(t.error) for t in tasks if t.error is not None]
    print(
        json.dumps(
            {
                "open_s": t0 - t_open,
                "submit_s": t1 - t0,
                "window_s": t2 - t0,
                "count": len(tasks),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
