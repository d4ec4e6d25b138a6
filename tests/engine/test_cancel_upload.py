"""Cancel of a resumable upload deletes its resource on the server (tus Termination, the
IETF draft's upload cancellation), whether it was running or suspended; a failed upload is
left alone (real engine, the project's tus and IETF-draft servers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer.testing import FaultServer

KiB = 1 << 10


def _deletes(server: FaultServer, resource: str) -> list[str]:
    return [r.headers.get("tus-resumable", "") for r in server.requests(resource)
            if r.method == "DELETE"]  # fmt: skip


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
@pytest.mark.parametrize("suspended", [False, True])
def test_cancel_sends_the_termination_request(
    server: FaultServer, tmp_path: Path, key: str, protocol: str, suspended: bool
) -> None:
    path = tmp_path / f"t-{protocol}-{suspended}-{key}.bin"
    path.write_bytes(os.urandom(256 * KiB))
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{path.name}")
    seen = len(server.requests())
    with bgtransfer.Session("up", home=tmp_path / "home", background=False) as s:
        task = s.upload(path, url, protocol=protocol, chunk_size=32 * KiB, max_rate="64K")
        deadline = time.monotonic() + 20
        while task.bytes_sent == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The upload's resource: where its bytes go.
        (resource,) = {r.path for r in server.requests()[seen:] if r.method == "PATCH"}
        if suspended:
            task.suspend()
        task.cancel()
        assert isinstance(task.error, bgtransfer.Cancelled)
        deadline = time.monotonic() + 10
        while not _deletes(server, resource) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert _deletes(server, resource) == ["1.0.0" if protocol == "tus" else ""]
    with pytest.raises(KeyError):  # the server dropped it
        (server.tus_data if protocol == "tus" else server.ietf_data)(path.name)
