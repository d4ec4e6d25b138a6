"""Issue 17's new fields on the wire and on disk: Spec.urls and Spec.refresh, the snapshot's
refreshed URL, their codecs, a real SQLite store, and rows written before they existed; the
options and ``metalink_downloads`` checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer._options import DownloadOptions, TaskBody
from bgtransfer._protocol._task import Snapshot, Spec
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import body_of, build_row, row_from_body
from bgtransfer.testing import FaultServer

URLS = ("http://a.example/f", "http://b.example/f?x=1")


def test_spec_round_trips_urls_and_refresh() -> None:
    spec = Spec(url=URLS[0], urls=URLS, refresh=("/bin/mint", "--for", "f"))
    again = Spec.from_json(spec.to_json())
    assert again == spec
    assert again.urls == URLS
    assert again.refresh == ("/bin/mint", "--for", "f")


def test_a_spec_written_before_issue_17_decodes() -> None:
    old = json.loads(Spec(url=URLS[0]).to_json())
    del old["urls"], old["refresh"]
    spec = Spec.from_json(json.dumps(old))
    assert spec.urls == ()
    assert spec.refresh is None


def test_snapshot_round_trips_the_refreshed_url_and_old_ones_decode() -> None:
    snap = Snapshot(
        refreshed_url="http://n/x",
        refreshed_headers=(("Authorization", "Bearer t"),),
        refreshes=3,
        refresh_expires=1.5e9,
    )
    assert Snapshot.from_json(snap.to_json()) == snap
    old = json.loads(Snapshot().to_json())
    for k in ("refreshed_url", "refreshed_headers", "refreshes", "refresh_expires"):
        del old[k]
    assert Snapshot.from_json(json.dumps(old)) == Snapshot()
    with pytest.raises(bgtransfer.InvalidRequest):
        Snapshot.from_dict({"refresh_expires": "soon"})


def test_the_store_keeps_the_refreshed_url(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    try:
        row = build_row("s", URLS[0], str(tmp_path / "f"), background=False, urls=list(URLS))
        store.insert(row)
        row.snap.refreshed_url = "http://n/x?token=abc"
        row.snap.refreshed_headers = (("X-K", "v"),)
        row.snap.refreshes = 1
        store.save(row.id, row.snap, wall_time=0.0)
        got = store.get(row.id)
        assert got is not None
        assert got.spec.urls == URLS
        assert got.snap.refreshed_url == "http://n/x?token=abc"
        assert got.snap.refreshed_headers == (("X-K", "v"),)
        assert got.snap.refreshes == 1
    finally:
        store.close()


def test_the_task_body_carries_urls_and_the_refresh_command(tmp_path: Path) -> None:
    bodies = []
    for given in ({"urls": URLS}, {"refresh": ["/bin/m"]}):
        row = build_row("s", URLS[0], str(tmp_path / "f"), background=True, **given)
        body = body_of(row).to_json()
        again = row_from_body(TaskBody.from_json(json.loads(json.dumps(body))), background=True)
        assert again.spec.urls == row.spec.urls
        assert again.spec.refresh == row.spec.refresh
        bodies.append(body)
    assert bodies[0]["urls"] == list(URLS)
    assert bodies[1]["refresh"] == ["/bin/m"]
    with pytest.raises(bgtransfer.InvalidRequest, match="not supported"):
        build_row("s", URLS[0], str(tmp_path / "g"), background=True, urls=URLS, refresh=["/m"])


def test_options_refuse_bad_sources_and_hooks(tmp_path: Path) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match="twice"):
        DownloadOptions(urls=(URLS[0], URLS[0]))
    with pytest.raises(bgtransfer.InvalidRequest, match="URL"):
        DownloadOptions(urls=("ftp://x/y",))
    with pytest.raises(bgtransfer.InvalidRequest, match="run by the daemon"):
        DownloadOptions(refresh=lambda info: {})  # type: ignore[arg-type]
    with pytest.raises(bgtransfer.InvalidRequest, match="argv"):
        DownloadOptions(refresh="mint --now")  # type: ignore[arg-type]
    with pytest.raises(bgtransfer.InvalidRequest, match="the first of them"):
        build_row("s", URLS[1], str(tmp_path / "f"), background=False, urls=URLS)


def test_metalink_downloads_gives_download_arguments(server: FaultServer, tmp_path: Path) -> None:
    import urllib.request

    with urllib.request.urlopen(server.url("/metalink/gen/1M?mirrors=3"), timeout=10) as r:
        doc = r.read()
    (one,) = bgtransfer.metalink_downloads(doc, path=tmp_path / "x.bin")
    assert one["path"] == str(tmp_path / "x.bin")
    assert len(one["urls"]) == 3
    assert len(one["sha256"]) == 64
    meta = tmp_path / "f.meta4"
    meta.write_bytes(doc)
    (again,) = bgtransfer.metalink_downloads(meta, directory=tmp_path)
    assert again["path"] == str(tmp_path / "1M")
    with bgtransfer.Session("m", home=tmp_path / "h", background=False) as s:
        t = s.download(**again).wait(timeout=60)
        assert t.error is None, t.error
    with pytest.raises(bgtransfer.InvalidRequest, match="Metalink"):
        bgtransfer.metalink_downloads(b"<metalink>")
    with pytest.raises(bgtransfer.InvalidRequest, match="cannot read"):
        bgtransfer.metalink_downloads(tmp_path / "missing.meta4")
    evil = doc.replace(b'name="1M"', b'name="../escape"')
    with pytest.raises(bgtransfer.InvalidRequest):
        bgtransfer.metalink_downloads(evil, directory=tmp_path)


def test_redact_hides_the_secrets_of_signed_urls() -> None:
    from bgtransfer._redact import redact

    text = (
        "failed: http://u:pw@h/f?X-Amz-Credential=AK%2F1&X-Amz-Date=20260101T000000Z"
        "&X-Amz-Signature=deadbeef and https://b/x?sig=abc&se=2030-01-01&token=t0k"
    )
    shown = redact(text)
    for secret in ("pw", "AK%2F1", "deadbeef", "abc", "t0k"):
        assert secret not in shown
    assert "X-Amz-Date=20260101T000000Z" in shown  # not a secret: kept for the reader
    assert "se=2030-01-01" in shown
    assert redact("no urls here") == "no urls here"
