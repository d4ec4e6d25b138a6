"""The helpers behind the check that no test leaves a daemon running (conftest.py)."""

from __future__ import annotations

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
