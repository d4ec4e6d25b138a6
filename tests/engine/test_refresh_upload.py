"""Refresh hooks on uploads (issue 17): a resumable upload whose token expires mid-way (the
real fault server answers a PATCH 403 once) gets new headers from the hook and goes on from
the server's offset; a first 403 stays a refusal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import bgtransfer
from bgtransfer.testing import FaultServer

FAST: dict[str, Any] = {"retry_wait": 0.05, "max_retry_wait": 0.2}
MiB = 1 << 20


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
def test_an_expired_token_mid_upload_is_refreshed(
    session: bgtransfer.Session, server: FaultServer, tmp_path: Path, key: str, protocol: str
) -> None:
    data = os.urandom(3 * MiB)
    path = tmp_path / f"up-{protocol}-{key}.bin"
    path.write_bytes(data)
    name = path.name
    server.upload_faults(name, status_once=403)  # the first PATCH: "token expired"
    url = server.url("/tus/") if protocol == "tus" else server.url(f"/ietf/{name}")
    calls: list[dict[str, Any]] = []

    def refresh(info: Any) -> dict[str, Any]:
        calls.append(dict(info))
        return {"url": url, "headers": {"Authorization": f"Bearer fresh-{key}"}}

    t = session.upload(
        path,
        url,
        protocol=protocol,
        chunk_size=MiB,
        headers={"Authorization": f"Bearer old-{key}"},
        refresh=refresh,
        **FAST,
    ).wait(timeout=60)
    assert t.error is None, t.error
    got = server.tus_data(name) if protocol == "tus" else server.ietf_data(name)
    assert got == data
    assert len(calls) == 1
    assert calls[0]["status"] == 403
    ours = (f"Bearer old-{key}", f"Bearer fresh-{key}")
    auth = [
        r.headers.get("authorization")
        for r in server.requests()
        if r.method == "PATCH" and r.headers.get("authorization") in ours
    ]
    # The refused PATCH carried the old token; every one after the refresh the new one.
    assert auth[0] == f"Bearer old-{key}"
    assert len(auth) >= 2
    assert set(auth[1:]) == {f"Bearer fresh-{key}"}
    assert any("URL refreshed" in a["outcome"] for a in t.history())


def test_an_upload_refresh_command_is_refused_as_a_callable_in_the_daemon(
    tmp_path: Path, daemon_home: Path
) -> None:
    src = tmp_path / "s"
    src.write_bytes(b"x")
    refused = pytest.raises(bgtransfer.InvalidRequest, match="callable runs only in a foreground")
    with bgtransfer.Session("t", home=daemon_home, background=True) as s, refused:
        s.upload(src, "http://127.0.0.1:9/u", refresh=lambda info: {})
