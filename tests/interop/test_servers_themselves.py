"""The third-party servers run as the tests promise: unprivileged, on loopback, logging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bgtransfer.testing._postgres import NOBODY
from bgtransfer.testing._thirdparty import StaticServer
from bgtransfer.testing._tusnode import TusNode, install_tus_node, tus_node_dir


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_a_static_server_runs_unprivileged_and_logs_each_request(
    static: StaticServer, key: str
) -> None:
    assert static.proc is not None
    expected = NOBODY if os.geteuid() == 0 else os.geteuid()
    assert uid_of(static.proc.pid) == expected
    assert static.root.stat().st_uid == expected
    name = f"who-{key}.bin"
    static.put(name, b"x" * 1000)
    assert static.probe(name)[":status"] == "200"
    assert static.probe(f"missing-{key}")[":status"] == "404"
    lines = static.wait_log(lambda ls: len(ls) >= 1, f"/{name}")
    assert [(x.method, x.status, x.bytes) for x in lines] == [("HEAD", 200, 0)]


def test_the_tus_server_runs_unprivileged_from_the_cached_install(tus_node: TusNode) -> None:
    assert tus_node.proc is not None
    expected = NOBODY if os.geteuid() == 0 else os.geteuid()
    assert uid_of(tus_node.proc.pid) == expected
    assert tus_node.modules.parent == tus_node_dir()
    assert install_tus_node() == tus_node_dir()  # installed once: the second call is a look


@pytest.mark.parametrize("where", ["", "noetag", "gz", "noranges"])
def test_every_location_serves_the_same_file(static: StaticServer, key: str, where: str) -> None:
    name = f"loc-{key}.bin"
    static.put(name, os.urandom(4096))
    got = static.probe(name, where=where)
    assert got[":status"] == "200"
    assert ("etag" in got) is (where != "noetag")
