"""The helpers behind the check that no test leaves a daemon running (conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .conftest import daemon_pid, daemons_under, kill_every_daemon, run_cli


def test_daemons_under_finds_a_home_s_daemon_and_kill_every_daemon_ends_it(
    tmp_path: Path,
) -> None:
    other = tmp_path / "not-the-fixture-home"
    other.mkdir(mode=0o700)
    assert run_cli(other, "daemon", "start").returncode == 0
    pid = daemon_pid(other)
    assert pid is not None
    assert daemons_under(tmp_path) == {pid: str(other)}
    assert daemons_under(tmp_path / "elsewhere") == {}
    assert kill_every_daemon(other) == [pid]
    assert daemons_under(tmp_path) == {}
    assert kill_every_daemon(other) == []


def test_process_stopped_is_true_only_for_a_process_that_stays_stopped() -> None:
    import signal
    import subprocess
    import sys
    import time

    from bgtransfer._daemon._lock import process_stopped

    # A busy process under strace is in tracing stop at each system call: not "stopped".
    busy = "import os\nwhile True: os.getpid()"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        assert not process_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not process_stopped(child.pid):
            assert time.monotonic() < deadline, "SIGSTOP not seen"
        os.kill(child.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while process_stopped(child.pid):
            assert time.monotonic() < deadline, "SIGCONT not seen"
        if shutil.which("strace") is not None:
            tracer = subprocess.Popen(
                ["strace", "-f", "-o", os.devnull, "-p", str(child.pid)],
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)  # attached (strace gives no sign of it)
                assert not any(process_stopped(child.pid) for _ in range(20))
            finally:
                tracer.terminate()
                tracer.wait(10)
    finally:
        child.kill()
        child.wait(10)
