"""Ordering audit of the daemon itself: a download, its completion and a cancel under strace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer.testing import FaultServer, gen_bytes
from tests.engine.test_ordering import STRACE, audit, audit_env

from .conftest import daemon_pid

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


def test_daemon_download_completion_and_cancel_follow_the_order(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    log = tmp_path / "strace.log"
    env = audit_env()
    cmd = [*STRACE, "-o", str(log)]
    cmd += [sys.executable, "-m", "bgtransfer", "--home", str(home), "daemon", "run"]
    tracer = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (home / "control.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        size = 6 << 20
        dest, dest2 = tmp_path / "ok.bin", tmp_path / "cancel.bin"
        # One transfer at a time keeps the trace short; R1 is per partial file either way.
        with bgtransfer.Session("audit", home=home) as s:
            c = s.download(server.url(f"/gen/{size}?rate=1000000&key={key}c"), dest2)
            deadline = time.monotonic() + 20
            while c.bytes_received == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            c.cancel()
            t = s.download(server.url(f"/gen/{size}?rate=5000000&key={key}"), dest)
            t.wait(timeout=60)
            assert t.error is None
            assert isinstance(c.error, bgtransfer.Cancelled)
        pid = daemon_pid(home)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        tracer.wait(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert dest.read_bytes() == gen_bytes(size)
    assert not dest2.exists()
    lines = log.read_text().splitlines()
    counts = audit(lines, dest)
    assert counts["places"] == 1, counts
    assert counts["part_syncs"] >= 2, counts
    assert counts["commits"] >= 3, counts
    assert counts["saves"] >= 2, counts  # the announcements were seen: R1 was checked
    assert counts["max_saved_offset"] == size, counts
    unlinks = [ln for ln in lines if "unlink" in ln and ".cancel.bin." in ln]
    assert unlinks, "the cancelled task's partial file was never unlinked"
    after = lines[lines.index(unlinks[-1]) + 1 :]
    dir_sync = f"<{tmp_path}>"
    assert any(("fsync(" in ln and dir_sync in ln) for ln in after), (
        "no directory fsync after unlink"
    )
