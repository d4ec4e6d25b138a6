"""W2 client: submit every download of a list to the daemon with one background session.

Usage: bgt_many.py LIST HOME, LIST holding 'URL<TAB>PATH' lines. Submits them all with
``Session.download()``, then waits for each; prints one JSON line with the window from the
first submit to the last completion, the submit phase alone, and the failures.
"""

from __future__ import annotations

import sys
import time

from _report import report  # a sibling: scripts run with their own folder on sys.path

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
    return report(t_open, t0, t1, t2, errors, len(tasks))


if __name__ == "__main__":
    sys.exit(main())
