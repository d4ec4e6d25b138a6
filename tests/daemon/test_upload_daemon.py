"""Resumable uploads through the daemon survive a SIGKILL with little re-sent."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer.testing import FaultServer

from .conftest import kill_daemon, run_cli

MiB = 1 << 20


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_daemon_sigkilled_midway_upload_resumes_from_the_server_offset(
    server: FaultServer, home: Path, tmp_path: Path, key: str, protocol: str
) -> None:
    size = 64 * MiB
    data = os.urandom(size)
    path = tmp_path / f"k-{protocol}-{key}.bin"
    path.write_bytes(data)
    name = path.name
    server.upload_faults(name, cut_after=10 * MiB)  # one cut as well as the kill
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{name}")
    with bgtransfer.Session("up", home=home) as s:
        t = s.upload(path, url, protocol=protocol, chunk_size=2 * MiB, retry_wait=0.05)
        deadline = time.monotonic() + 60
        while t.bytes_sent < 24 * MiB and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kill_daemon(home, signal.SIGKILL) is not None
        t.wait(timeout=120)  # the call starts the daemon again; it picks the upload up
        assert t.error is None, t.error
    got = server.tus_data(name) if protocol == "tus" else server.ietf_data(name)
    assert got == data
    received = server.upload_received(name)
    assert received <= size + 8 * MiB, f"re-sent {received - size} bytes"


def test_put_command(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:
    path = tmp_path / "cli.bin"
    data = os.urandom(MiB)
    path.write_bytes(data)
    r = run_cli(home, "put", str(path), server.url(f"/upload/cli-{key}"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "upload"
    assert doc["bytes_sent"] == MiB
    assert doc["error"] is None
    assert server.uploads[f"cli-{key}"] == data
    r = run_cli(home, "put", str(path), server.url("/tus/"), "--protocol", "tus")
    assert r.returncode == 0, r.stderr
    assert "uploaded" in r.stderr
    r = run_cli(home, "put", str(tmp_path / "nope"), server.url("/upload/x"))
    assert r.returncode == 5
    assert "cannot read the source" in r.stderr
