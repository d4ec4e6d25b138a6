"""Servers nobody here wrote: nginx, Apache httpd and tus-node-server, each started once per
test session from the machine's packages, in a temporary directory, on a free port of
127.0.0.1, as an unprivileged user, and stopped at the end.

A server that cannot exist here is a skip with the reason, except under CI=true, where it
is a failure: .ci/run installs them (the rule the PostgreSQL fixture follows).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgtransfer.testing._thirdparty import (
    Apache,
    Nginx,
    StaticServer,
    apache_missing,
    make_pki,
    nginx_missing,
)
from bgtransfer.testing._tusnode import TusNode, install_tus_node, tus_node_missing
from tests.daemon.conftest import home, no_daemon_left  # noqa: F401 - fixtures

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}


def committed(task_home: Path, task_id: str) -> int:
    """The offset the daemon's store holds for a task (bytes a download vouches for, bytes
    a tus server confirmed): what a daemon restarted after a SIGKILL goes on from. Progress
    a client reads is ahead of it by up to a checkpoint."""
    db = task_home / "bgtransfer.sqlite3"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute('SELECT "offset" FROM tasks WHERE id = ?', (task_id,)).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def need(why: str | None) -> None:
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def nginx() -> Iterator[Nginx]:
    """nginx with HTTP and, on ``tls_port``, HTTPS under a CA made for the run
    (``nginx.pki.ca`` is the bundle that trusts it)."""
    need(nginx_missing())
    need(None if shutil.which("openssl") else "the openssl CLI is not installed")
    with Nginx() as srv:
        pki = make_pki(srv.root / "pki")
        srv.start(tls=pki)
        yield srv


@pytest.fixture(scope="session")
def apache() -> Iterator[Apache]:
    need(apache_missing())
    with Apache() as srv:
        srv.start()
        yield srv


@pytest.fixture(params=["nginx", "apache"])
def static(request: pytest.FixtureRequest) -> StaticServer:
    """Each static-file server in turn."""
    srv: StaticServer = request.getfixturevalue(request.param)
    return srv


@pytest.fixture(scope="session")
def tus_node() -> Iterator[TusNode]:
    need(tus_node_missing())
    try:
        modules = install_tus_node()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        need(f"cannot install @tus/server with npm: {exc}")
        raise  # need() did not return
    with TusNode(modules) as srv:
        srv.start()
        yield srv
