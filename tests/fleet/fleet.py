"""Helpers for the fleet tests: real worker processes on a real PostgreSQL.

Every wait is bounded in time; every worker a test starts is killed at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bgtransfer._store._base import TaskRow
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._tasks import build_row

__all__ = ["Fleet", "completed_events", "eventually", "rows_for"]


def eventually(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")


def show_logs(fleet: Fleet) -> None:
    """Print every worker's log tail (pytest shows it for a failed test)."""
    for name in fleet.procs:
        print(f"--- {name} ---\n{fleet.log(name)[-6000:]}")


def rows_for(urls: Iterable[str], directory: Path, **options: object) -> list[TaskRow]:
    return [
        build_row("fleet", url, directory / f"f{i}", background=True, **options)  # type: ignore[arg-type]
        for i, url in enumerate(urls)
    ]


def completed_events(url: str) -> dict[str, int]:
    """COMPLETED events per task id, straight from the events table."""
    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(
            "SELECT task_id, COUNT(*) FROM events WHERE state='completed' GROUP BY task_id"
        )
        return {str(t): int(n) for t, n in cur.fetchall()}


@dataclass
class Fleet:
    """Worker subprocesses on one store; their stderr in ``logs``."""

    url: str
    logs: Path
    lease: float = 2.0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self,
        name: str,
        *,
        max_active: int = 4,
        max_per_host: int = 6,
        as_nobody: bool = False,
        wrap: tuple[str, ...] = (),  # a command the worker runs under (e.g. prlimit ... --)
    ) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        prefix = (
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
        )
        prefix += wrap
        try:
            self.procs[name] = subprocess.Popen(
                [*prefix, sys.executable, "-m", "bgtransfer._fleet", "--store", self.url,
                 "--name", name, "--lease", str(self.lease), "--max-active", str(max_active),
                 "--max-per-host", str(max_per_host), "--log-level", "INFO"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        finally:
            log.close()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self, name: str, timeout: float = 20.0) -> int:
        """SIGTERM once it runs (a worker still importing would just die of it) and its
        exit status."""
        proc = self.procs[name]
        eventually(lambda: "claiming from the queue" in self.log(name), 20, f"{name} runs")
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)

    def wait_done(self, store: PostgresStore, ids: Iterable[str], timeout: float) -> None:
        wanted = set(ids)

        def done() -> bool:
            rows = [store.get(i) for i in wanted]
            return all(r is not None and r.snap.phase.value == "done" for r in rows)

        eventually(done, timeout, "every task done", interval=0.2)
