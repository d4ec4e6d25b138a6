"""Mirror a set of files with background downloads, the way an app built on bgtransfer should.

    python examples/mirror.py MANIFEST DEST [--home DIR] [--idle SECONDS]

MANIFEST is JSON lines, one file each: ``{"name": "a.bin", "url": "http://...", "sha256":
"..."}`` (``sha256`` optional but recommended: see the README's *Guarantees for app
developers*). Every file ends up in DEST, and DEST/.ledger.jsonl gets exactly one line per
file, however often this program (or the daemon) is killed and started again:

1. On every start it submits every file the ledger does not list yet. The idempotency key
   makes that safe: a file whose task exists (running, or finished while we were away) gets
   that task back, not a second download.
2. It takes outcomes from ``Session.completions()`` (those that finished while it was away
   first, then live ones), records each in the ledger (written and fsynced), and only then
   acknowledges it. A crash between the two delivers the completion again at the next
   start; the ledger sees the name is there and just acknowledges it: the handler is
   idempotent, so at-least-once delivery gives exactly one ledger line.
3. A failed download is logged in DEST/.failures.jsonl, acknowledged, and submitted again
   with a new key (the name plus the number of failures so far).

Exit status: 0 when every file is in the ledger, 1 if the program gave up waiting (nothing
finished for --idle seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bgtransfer

SESSION = "com.example.mirror"


def read_jsonl(path: Path, *, repair: bool = True) -> Iterator[dict[str, Any]]:
    """Complete lines only: a crash mid-write leaves a partial last line, which ``repair``
    cuts off so the next line starts clean (the record it held is written again)."""
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if not repair:
        end = len(data)
    elif end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    for line in data[:end].splitlines():
        if line.strip():
            yield json.loads(line)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Mirror:
    def __init__(self, manifest: list[dict[str, Any]], dest: Path) -> None:
        self.files = {item["name"]: item for item in manifest}
        self.dest = dest
        self.ledger = dest / ".ledger.jsonl"
        self.failures = dest / ".failures.jsonl"
        self.done = {r["name"] for r in read_jsonl(self.ledger)}
        self.failed: dict[str, int] = {}
        for r in read_jsonl(self.failures):
            self.failed[r["name"]] = self.failed.get(r["name"], 0) + 1

    def key(self, name: str) -> str:
        return f"{name}#{self.failed.get(name, 0)}"

    def request(self, name: str) -> dict[str, Any]:
        item = self.files[name]
        return {
            "url": item["url"],
            "path": self.dest / name,
            "sha256": item.get("sha256"),
            "idempotency_key": self.key(name),
            "metadata": {"name": name, "key": self.key(name)},
            "retry_wait": 0.2,
            "max_retry_wait": 5.0,
        }

    def submit_missing(self, s: bgtransfer.Session) -> None:
        missing = [n for n in self.files if n not in self.done]
        if missing:
            s.download_many([self.request(n) for n in missing])

    def handle(self, s: bgtransfer.Session, t: bgtransfer.Task) -> None:
        """Record the outcome, then acknowledge it (never the other way round)."""
        meta = t.metadata or {}
        name = meta.get("name")
        if name not in self.files or name in self.done:
            t.acknowledge()  # handled before a crash (or not ours): the ledger has it
            return
        if t.error is None:
            append_jsonl(
                self.ledger,
                {"name": name, "task": t.id, "bytes": t.bytes_received, "sha256": t.sha256},
            )
            self.done.add(name)
            t.acknowledge()
            return
        if meta.get("key") == self.key(name):  # not counted yet (a replay after a crash is)
            append_jsonl(self.failures, {"name": name, "task": t.id, "error": str(t.error)})
            self.failed[name] = self.failed.get(name, 0) + 1
        t.acknowledge()
        s.download_many([self.request(name)])  # a new key: a new task

    def run(self, home: str | None, idle: float) -> int:
        with bgtransfer.Session(SESSION, home=home) as s:
            self.submit_missing(s)
            if len(self.done) == len(self.files):
                return 0
            for t in s.completions(timeout=idle):
                self.handle(s, t)
                if len(self.done) == len(self.files):
                    return 0
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--home", default=None, help="bgtransfer home (default: the user's)")
    parser.add_argument("--idle", type=float, default=300.0, help="give up after S idle seconds")
    args = parser.parse_args(argv)
    manifest = list(read_jsonl(args.manifest, repair=False))
    args.dest.mkdir(parents=True, exist_ok=True)
    mirror = Mirror(manifest, args.dest)
    code = mirror.run(args.home, args.idle)
    print(f"{len(mirror.done)}/{len(mirror.files)} files mirrored", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
