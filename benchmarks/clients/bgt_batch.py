"""W2 client: submit the whole list with one ``Session.download_many()`` call, then
``Session.wait_all()`` for all of them.

Usage: bgt_batch.py LIST HOME, LIST holding 'URL<TAB>PATH' lines. The batch is one request to
the daemon and one store transaction. Prints one JSON line like bgt_many.py; exits 3 if this
bgtransfer has no download_many (older revisions).
"""

from __future__ import annotations

import sys
import time

from _report import report  # a sibling: scripts run with their own folder on sys.path

import bgtransfer


def main() -> int:
    list_file, home = sys.argv[1:3]
    with open(list_file) as f:
        items = [
            dict(zip(("url", "path"), line.rstrip("\n").split("\t"), strict=True))
            for line in f
            if line.strip()
        ]
    t_open = time.perf_counter()
    with bgtransfer.Session("bench.batch", home=home, background=True) as s:
        if not hasattr(s, "download_many"):
            print("this bgtransfer has no Session.download_many", file=sys.stderr)
            return 3
        t0 = time.perf_counter()
        tasks = s.download_many(items)
        t1 = time.perf_counter()
        if hasattr(s, "wait_all"):
            s.wait_all(tasks, timeout=900)  # one long poll per 5000 tasks
        else:  # older revisions (--rev)
            for t in tasks:
                t.wait(timeout=900)
        t2 = time.perf_counter()
        errors = [str(t.error) for t in tasks if t.error is not None]
    return report(t_open, t0, t1, t2, errors, len(tasks))


if __name__ == "__main__":
    sys.exit(main())
