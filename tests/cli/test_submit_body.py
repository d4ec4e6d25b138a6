"""The body `get`/`add`/`put` send (``body_of`` of the row the library's builder made)
makes the daemon's reading of it build the same row again (no daemon process needed: both
sides are called directly)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bgtransfer._daemon._task_routes import _Submitted
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import (
    DOWNLOAD_OPTIONS,
    UPLOAD_OPTIONS,
    body_of,
    build_row,
    build_upload_row,
)


def same_task(a: TaskRow, b: TaskRow) -> None:
    """Equal but for what each build makes anew (its id, the partial file named by it, and
    the creation time)."""
    assert a.spec == b.spec
    assert a.snap == b.snap
    skip = {"id", "partial", "spec", "snap", "created_at", "updated_at"}
    for field in dataclasses.fields(TaskRow):
        if field.name not in skip:
            assert getattr(a, field.name) == getattr(b, field.name), field.name


def test_a_download_with_every_cli_option_round_trips(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"old")
    row = build_row(
        "cli", "http://127.0.0.1:9/x", str(tmp_path / "exists"), background=True,
        headers=[("X-A", "b")], idempotency_key="k1", sha256="a" * 64, request_timeout=9,
        resource_timeout=99, overwrite=True, max_attempts=3, retry_for=300.0, segments=3,
        max_bytes=1 << 20, start_at=2e9, max_rate=1024, priority="high", umask=0o027,
    )  # fmt: skip
    body = body_of(row).to_json()
    assert set(DOWNLOAD_OPTIONS) <= set(body)
    assert body["umask"] == 0o027
    same_task(_Submitted.parse(body).row(check_exists=True), row)


def test_a_download_with_defaults_round_trips(tmp_path: Path) -> None:
    row = build_row("s", "https://h.example/f?a=1", str(tmp_path / "f"), background=True)
    same_task(_Submitted.parse(body_of(row).to_json()).row(check_exists=True), row)


@pytest.mark.parametrize("protocol", ["plain", "multipart", "tus", "ietf"])
def test_an_upload_round_trips(tmp_path: Path, protocol: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    row = build_upload_row(
        "cli", str(src), "http://127.0.0.1:9/u", background=True, protocol=protocol,
        form_fields=[("album", "2026")], field_name="f", retry_unsafe=True,
        headers=[("X-A", "b")], idempotency_key="k2", request_timeout=5, start_at=2e9,
    )  # fmt: skip
    body = body_of(row).to_json()
    assert body["kind"] == "upload"
    assert set(UPLOAD_OPTIONS) <= set(body)
    assert "umask" not in body  # the daemon refuses it for uploads
    same_task(_Submitted.parse(body).row(check_exists=True), row)
