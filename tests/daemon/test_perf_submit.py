"""The daemon's submit and wait paths (issue 19): submits are inserted by the engine's group
commit in its writer thread, concurrent ones in one transaction, each still answered only
once its task is stored; a wait on a finished task is answered from the store at once, and
a waiter is woken by the committed completion.

A real daemon subprocess, spoken to over its socket by many concurrent connections.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgtransfer._daemon._paths import socket_path
from bgtransfer._daemon._server import STORE_NAME
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.conftest import run_cli

CLIENTS = 24  # more concurrent submits than the writer can take one by one


@pytest.fixture
def daemon(home: Path) -> Path:
    r = run_cli(home, "daemon", "start")
    assert r.returncode == 0, r.stderr
    return home


def stored(home: Path) -> list[tuple[str, str, str | None]]:
    """(id, path, key) of every task, read by a connection of our own."""
    db = sqlite3.connect(home / STORE_NAME)
    try:
        return db.execute("SELECT id, path, idempotency_key FROM tasks").fetchall()
    finally:
        db.close()


async def post_all(home: Path, bodies: list[Any]) -> list[tuple[int, Any]]:
    """POST each body on its own connection, all at once."""

    async def one(body: Any) -> tuple[int, Any]:
        conn = aiohttp.UnixConnector(path=socket_path(str(home)))
        async with (
            aiohttp.ClientSession(connector=conn) as http,
            http.post("http://d/v1/tasks", json=body) as resp,
        ):
            return resp.status, await resp.json()

    async with asyncio.timeout(60):
        return await asyncio.gather(*(one(b) for b in bodies))


def body(url: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"session": "perf", "url": url, "path": str(path), **extra}


def test_concurrent_submits_are_each_stored_before_their_answer(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    bodies = [
        body(server.url(f"/gen/2000?seed={i}&key={key}{i}"), tmp_path / f"f{i}")
        for i in range(CLIENTS)
    ]
    answers = asyncio.run(post_all(daemon, bodies))
    assert [status for status, _ in answers] == [201] * CLIENTS
    ids = {a["id"] for _, a in answers}
    assert len(ids) == CLIENTS
    assert ids <= {row[0] for row in stored(daemon)}  # every answer names a stored task
    status, done = asyncio.run(
        wait_once(daemon, "/v1/wait", json={"ids": sorted(ids), "timeout": 60})
    )
    assert status == 200
    assert {t["state"] for t in done["tasks"]} == {"completed"}
    for i in range(CLIENTS):
        assert (tmp_path / f"f{i}").read_bytes() == gen_bytes(2000, seed=i)


def test_one_key_raced_by_many_clients_makes_one_task(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    # The key is looked up among submits still waiting for their commit, not only in the
    # store: without that, every racer would find nothing and all but one insert would fail.
    url, dest = server.url(f"/gen/500?key={key}"), tmp_path / "one.bin"
    answers = asyncio.run(post_all(daemon, [body(url, dest, idempotency_key="k1")] * CLIENTS))
    assert sorted({status for status, _ in answers}) in ([200, 201], [201])
    assert [s for s, _ in answers].count(201) == 1
    assert len({a["id"] for _, a in answers}) == 1
    assert [p for _, p, _ in stored(daemon)] == [str(dest)]


def test_a_refused_submit_does_not_sink_the_others_in_its_transaction(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    # Many clients target one path at once: one task, the others 409 (the path is taken by
    # an unfinished task). A batch with one such item is refused whole; its other items
    # are not stored, while the submits committed beside it are.
    slow = server.url(f"/gen/100000?rate=20000&key={key}")
    same = tmp_path / "same.bin"
    bodies: list[Any] = [body(slow, same) for _ in range(CLIENTS)]
    bodies.append({"tasks": [body(slow, tmp_path / "mine1"), body(slow, same)]})
    bodies += [body(slow, tmp_path / f"free{i}") for i in range(4)]
    answers = asyncio.run(post_all(daemon, bodies))
    statuses = [s for s, _ in answers]
    assert statuses[:CLIENTS].count(201) + (statuses[CLIENTS] == 201) == 1
    assert all(s in (201, 409) for s in statuses[: CLIENTS + 1])
    assert statuses[CLIENTS + 1 :] == [201] * 4
    refused = [a for s, a in answers if s == 409]
    assert all(a["error"]["code"] == "destination_error" for a in refused)
    paths = sorted(p for _, p, _ in stored(daemon))
    expected = sorted([str(same)] + [str(tmp_path / f"free{i}") for i in range(4)])
    if statuses[CLIENTS] == 201:
        expected.append(str(tmp_path / "mine1"))
    assert paths == sorted(expected)


async def wait_once(home: Path, path: str, **kwargs: Any) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=socket_path(str(home)))
    async with aiohttp.ClientSession(connector=conn) as http:
        async with asyncio.timeout(60):
            if "json" in kwargs:
                async with http.post(f"http://d{path}", json=kwargs["json"]) as resp:
                    return resp.status, await resp.json()
            async with http.get(f"http://d{path}") as resp:
                return resp.status, await resp.json()


def test_waiters_are_woken_by_the_completion_and_finished_tasks_answer_at_once(
    daemon: Path, server: FaultServer, tmp_path: Path, key: str
) -> None:
    url = server.url(f"/gen/3000?stall_headers=1.5&key={key}")
    ((status, task),) = asyncio.run(post_all(daemon, [body(url, tmp_path / "w.bin")]))
    assert status == 201
    # Woken by the pushed completion: the waiter re-reads on its own only once a minute,
    # so a wait that ends well before its 40 s timeout was told (not a speed check: the
    # task itself takes about 1.5 s).
    t0 = time.monotonic()
    status, seen = asyncio.run(wait_once(daemon, f"/v1/tasks/{task['id']}/wait?timeout=40"))
    assert status == 200
    assert seen["state"] == "completed"
    assert time.monotonic() - t0 < 30
    # Finished: answered even with no time to wait at all, for one and for many.
    status, again = asyncio.run(wait_once(daemon, f"/v1/tasks/{task['id']}/wait?timeout=0"))
    assert (status, again["state"]) == (200, "completed")
    status, many = asyncio.run(
        wait_once(daemon, "/v1/wait", json={"ids": [task["id"]] * 3, "timeout": 0})
    )
    assert status == 200
    assert [t["state"] for t in many["tasks"]] == ["completed"] * 3
    status, missing = asyncio.run(wait_once(daemon, "/v1/tasks/nope/wait?timeout=1"))
    assert status == 404
    assert missing["error"]["code"] == "task_not_found"
