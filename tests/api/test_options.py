"""One place for the options' defaults and one codec for the task body (issue 15):
DownloadOptions / UploadOptions validate and normalise, TaskBody is what a client sends to
the daemon, and a row, its body and the row rebuilt from that body agree."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bgtransfer
from bgtransfer._options import DownloadOptions, TaskBody, UploadOptions
from bgtransfer._tasks import (
    DOWNLOAD_OPTIONS,
    UPLOAD_OPTIONS,
    body_of,
    build_row,
    build_upload_row,
    options_of,
    row_from_body,
)


def signature_defaults(fn: Any) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


@pytest.mark.parametrize(
    ("fn", "cls"),
    [
        (bgtransfer.Session.download, DownloadOptions),
        (bgtransfer.AsyncSession.download, DownloadOptions),
        (bgtransfer.Session.upload, UploadOptions),
        (bgtransfer.AsyncSession.upload, UploadOptions),
    ],
)
def test_the_api_shows_the_options_defaults(fn: Any, cls: Any) -> None:
    shown = signature_defaults(fn)
    defaults = cls.defaults()
    # Every option is a parameter, with the one default.
    assert {k: shown[k] for k in defaults} == defaults
    # ...and the parameters that are not options are the request's identity.
    assert set(shown) - set(defaults) == {"idempotency_key"}


def test_the_dict_views_are_the_dataclasses() -> None:
    assert DownloadOptions.defaults() == DOWNLOAD_OPTIONS
    assert UploadOptions.defaults() == UPLOAD_OPTIONS
    assert DOWNLOAD_OPTIONS["request_timeout"] == 60.0
    assert DOWNLOAD_OPTIONS["resource_timeout"] == 7 * 86400.0
    assert UPLOAD_OPTIONS["max_retry_wait"] == 120.0


def test_options_are_normalised_when_built() -> None:
    d = DownloadOptions(
        headers={"X-A": " 1 "},  # type: ignore[arg-type]
        max_rate="4M",  # type: ignore[arg-type]
        retry_wait=200,
        request_timeout=5,
        on_complete=["/bin/true"],  # type: ignore[arg-type]
        metadata={"k": [1, 2]},
    )
    assert d.headers == (("X-A", "1"),)
    assert d.max_rate == 4 << 20
    assert d.max_retry_wait == 200.0  # never below retry_wait
    assert type(d.request_timeout) is float
    assert d.request_timeout == 5.0
    assert d.on_complete == ("/bin/true",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.segments = 3  # type: ignore[misc]
    assert UploadOptions(protocol="tus").method == "POST"
    assert UploadOptions(protocol="multipart").method == "POST"
    assert UploadOptions(protocol="multipart", method="patch").method == "PATCH"
    assert UploadOptions().method == "PUT"


def test_metadata_is_a_copy() -> None:
    meta: dict[str, Any] = {"k": [1]}
    d = DownloadOptions(metadata=meta)
    meta["k"].append(2)
    assert d.metadata == {"k": [1]}
    d.to_json()["metadata"]["k"].append(3)
    assert d.metadata == {"k": [1]}


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (DownloadOptions, {"request_timeout": 0}, "request_timeout"),
        (DownloadOptions, {"resource_timeout": float("inf")}, "resource_timeout"),
        (DownloadOptions, {"retry_for": "1s"}, "retry_for"),
        (DownloadOptions, {"max_attempts": 0}, "max_attempts"),
        (DownloadOptions, {"segments": 17}, "segments"),
        (DownloadOptions, {"max_bytes": -1}, "max_bytes"),
        (DownloadOptions, {"sha256": "zz"}, "sha256"),
        (DownloadOptions, {"overwrite": 1}, "overwrite"),
        (DownloadOptions, {"low_speed_limit": -1}, "low_speed_limit"),
        (DownloadOptions, {"priority": "urgent"}, "priority"),
        (DownloadOptions, {"start_at": -5}, "start_at"),
        (DownloadOptions, {"max_rate": 0}, "max_rate"),
        (DownloadOptions, {"on_complete": "ls -l"}, "on_complete"),
        (DownloadOptions, {"metadata": [1]}, "metadata"),
        (DownloadOptions, {"headers": [("Range", "bytes=0-")]}, "Range"),
        (UploadOptions, {"protocol": "ftp"}, "protocol"),
        (UploadOptions, {"protocol": ["tus"]}, "protocol"),
        (UploadOptions, {"method": "GE T"}, "method"),
        (UploadOptions, {"field_name": ""}, "field_name"),
        (UploadOptions, {"retry_unsafe": "yes"}, "retry_unsafe"),
        (UploadOptions, {"chunk_size": 0}, "chunk_size"),
        (UploadOptions, {"response_path": 3}, "response_path"),
        (UploadOptions, {"form_fields": [("a",)]}, "pair"),
    ],
)
def test_a_bad_option_is_an_invalid_request(cls: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(bgtransfer.InvalidRequest, match=message):
        cls(**values)


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="colour"):
        DownloadOptions(colour="red")  # type: ignore[call-arg]
    with pytest.raises(bgtransfer.InvalidRequest, match="unknown fields: colour"):
        DownloadOptions.from_json({"colour": "red"})
    with pytest.raises(bgtransfer.InvalidRequest, match="unknown fields: sha256"):
        UploadOptions.from_json({"sha256": None})  # a download option


def _download_body(tmp_path: Path, **options: Any) -> TaskBody:
    return TaskBody(
        session="s",
        url="https://example.org/a?b=1",
        path=str(tmp_path / "a.bin"),
        options=DownloadOptions(**options),
        idempotency_key="k1",
        umask=0o022,
    )


def test_body_round_trips_through_json(tmp_path: Path) -> None:
    body = _download_body(
        tmp_path, headers=(("Authorization", "Bearer x"),), segments=4, metadata={"n": 1}
    )
    wire = json.loads(json.dumps(body.to_json()))
    assert wire["kind"] == "download"
    assert wire["umask"] == 0o022
    assert wire["headers"] == [["Authorization", "Bearer x"]]
    assert TaskBody.from_json(wire) == body
    up = TaskBody(
        "s",
        "https://example.org/u",
        str(tmp_path / "src"),
        UploadOptions(protocol="tus", form_fields=(("a", "b"),), on_complete=("/bin/true",)),
    )
    wire = json.loads(json.dumps(up.to_json()))
    assert "umask" not in wire
    assert wire["kind"] == "upload"
    assert TaskBody.from_json(wire) == up


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evil": 1}, "unknown fields: evil"),
        ({"path": "rel/a.bin"}, "must be absolute"),
        ({"path": 5}, "target path must be a string"),
        ({"session": ""}, "session"),
        ({"kind": "sideways"}, "kind"),
        ({"url": 5}, "URL must be a string"),
        ({"umask": 0o1000}, "umask"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"request_timeout": -1}, "request_timeout"),
        ({"kind": "upload"}, "unknown fields: .*umask"),  # a download's field on an upload
    ],
)
def test_a_bad_body_is_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    wire = {**_download_body(tmp_path).to_json(), **change}
    with pytest.raises(bgtransfer.InvalidRequest, match=message):
        TaskBody.from_json(wire)
    with pytest.raises(bgtransfer.InvalidRequest, match="JSON object"):
        TaskBody.from_json([wire])


def test_a_row_its_body_and_the_row_rebuilt_from_it_agree(tmp_path: Path) -> None:
    row = build_row(
        "s",
        "https://example.org/f",
        tmp_path / "f.bin",
        background=True,
        idempotency_key="key",
        headers={"X-Token": "t"},
        max_rate="1M",
        on_complete=["/bin/true"],
        metadata={"a": 1},
        segments=3,
    )
    body = body_of(row)
    again = row_from_body(TaskBody.from_json(json.loads(json.dumps(body.to_json()))),
                          background=True)  # fmt: skip
    assert again.spec == row.spec
    assert (again.path, again.session, again.idempotency_key) == (row.path, "s", "key")
    assert (again.on_complete, again.metadata) == (("/bin/true",), {"a": 1})
    assert again.id != row.id  # a new task; the daemon's key lookup finds the old one
    assert options_of(again) == options_of(row)

    src = tmp_path / "up.bin"
    src.write_bytes(b"x" * 10)
    up = build_upload_row("s", src, "https://example.org/u", background=False,
                          protocol="ietf", response_path=tmp_path / "answer")  # fmt: skip
    again = row_from_body(TaskBody.from_json(body_of(up).to_json()), background=False)
    assert again.spec == up.spec
    assert again.spec.method == "POST"
    assert again.snap.total == 10
    assert again.path == os.fspath(src)


def test_hooks_need_a_background_session(tmp_path: Path) -> None:
    body = _download_body(tmp_path, on_complete=("/bin/true",))
    with pytest.raises(bgtransfer.InvalidRequest, match="daemon"):
        row_from_body(body, background=False)
    assert row_from_body(body, background=True).on_complete == ("/bin/true",)


_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
_seconds = st.floats(min_value=0.001, max_value=1e9, allow_nan=False)
_options = st.fixed_dictionaries(
    {},
    optional={
        "headers": st.lists(st.tuples(st.sampled_from(["X-A", "Accept", "Cookie"]), _text)),
        "request_timeout": _seconds,
        "resource_timeout": _seconds,
        "max_attempts": st.none() | st.integers(1, 100),
        "retry_for": st.none() | _seconds,
        "retry_wait": _seconds,
        "max_retry_wait": _seconds,
        "on_complete": st.none() | st.lists(_text, min_size=1, max_size=3),
        "metadata": st.none() | st.dictionaries(_text, st.integers() | _text, max_size=3),
        "start_at": st.none() | st.floats(0, 4e9),
        "max_rate": st.none() | st.integers(1, 1 << 40),
        "priority": st.sampled_from(["high", "normal", "low"]),
        "sha256": st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
        "overwrite": st.booleans(),
        "segments": st.integers(1, 16),
        "max_bytes": st.none() | st.integers(0, 1 << 50),
    },
)


@settings(max_examples=200, deadline=None)
@given(_options)
def test_any_valid_options_round_trip(values: dict[str, Any]) -> None:
    options = DownloadOptions(**values)
    wire = json.loads(json.dumps(options.to_json()))
    assert DownloadOptions.from_json(wire) == options
    assert set(wire) == set(DOWNLOAD_OPTIONS)


@pytest.mark.parametrize(
    "states",
    [(), ("running",), ("completed",), ("running", "suspended"), ("canceling", "completed")],
)
def test_query_phases_match_the_daemons(states: tuple[str, ...]) -> None:
    # Two readers of one rule until the daemon uses Query: they must agree.
    from bgtransfer._daemon._stream import phases_of
    from bgtransfer._session._views import parse_query

    query = parse_query(list(states) or None, None, 5, None)
    assert query is not None
    assert query.phases() == phases_of(list(states))
    assert len(query.phases()) >= len(states)
