"""One JSON form each for Spec and Snapshot: round trips, the store's form, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtransfer._exceptions import (
    ContentChanged,
    HTTPStatusError,
    InvalidRequest,
    ReadError,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Phase
from bgtransfer._protocol import _defaults as D
from bgtransfer._protocol._task import Snapshot, Spec

text = st.text(max_size=20)
pairs = st.lists(st.tuples(text, text), max_size=3).map(tuple)
floats = st.floats(allow_nan=False)  # NaN is never equal to itself
ints = st.integers(min_value=-(2**62), max_value=2**62)


def opt(s: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | s


specs = st.builds(
    Spec,
    url=text,
    headers=pairs,
    request_timeout=floats,
    resource_timeout=floats,
    sha256=opt(text),
    low_speed_limit=ints,
    low_speed_time=floats,
    max_redirects=ints,
    max_restarts=ints,
    max_attempts=opt(ints),
    retry_for=opt(floats),
    retry_wait=floats,
    max_retry_wait=floats,
    kind=st.sampled_from(["download", "upload"]),
    method=text,
    protocol=st.sampled_from(["plain", "multipart", "tus", "ietf"]),
    source_size=opt(ints),
    source_mtime_ns=opt(ints),
    field_name=text,
    form_fields=pairs,
    retry_unsafe=st.booleans(),
    chunk_size=ints,
    segments=ints,
    max_bytes=opt(ints),
    start_at=opt(floats),
    max_rate=opt(ints),
    priority=st.sampled_from(["low", "normal", "high"]),
    job_id=opt(text),
    response_path=opt(text),
    umask=opt(st.integers(min_value=0, max_value=0o777)),
)

ERRORS: list[type[TransferError]] = [
    TransferError,
    ReadError,
    TransferTimeout,
    HTTPStatusError,
    ContentChanged,
]
errors = st.builds(
    lambda cls, msg, status: cls(msg, status_code=status),
    st.sampled_from(ERRORS),
    text,
    opt(st.integers(min_value=100, max_value=599)),
)
segments = st.lists(st.tuples(ints, ints, ints), max_size=3).map(tuple)

snapshots = st.builds(
    Snapshot,
    phase=st.sampled_from(list(Phase)),
    detail=text,
    offset=ints,
    total=opt(ints),
    etag=opt(text),
    last_modified=opt(text),
    restarts=ints,
    attempts=ints,
    failures=ints,
    status_code=opt(ints),
    error=opt(errors),
    active_seconds=floats,
    response_status=opt(ints),
    response_headers=pairs,
    response_reason=opt(text),
    response_body=opt(st.binary(max_size=64)),
    upload_url=opt(text),
    segments=segments,
    boot_id=opt(text),
    unsafe_sent=st.booleans(),
    partial_id=st.lists(ints, max_size=5).map(tuple),
)


@given(specs)
def test_a_spec_survives_its_json(spec: Spec) -> None:
    assert Spec.from_json(spec.to_json()) == spec
    assert Spec.from_dict(json.loads(spec.to_json())) == spec


@given(specs)
def test_the_spec_json_is_the_form_older_stores_wrote(spec: Spec) -> None:
    # Stores before the codec wrote json.dumps(asdict(spec)); the store now writes and reads
    # through Spec.to_json/from_json, so rows of either age read back the same (no migration).
    assert spec.to_json() == json.dumps(asdict(spec))
    assert Spec.from_json(json.dumps(asdict(spec))) == spec


@given(snapshots)
def test_a_snapshot_survives_its_json(snap: Snapshot) -> None:
    back = Snapshot.from_json(snap.to_json())
    assert back == snap
    assert type(back.error) is type(snap.error)


def test_the_snapshot_json_names_every_field() -> None:
    snap = Snapshot(
        phase=Phase.TRANSFERRING,
        offset=5,
        error=ReadError("reset"),
        response_body=b"\x00\xff",
        segments=((0, 5, 10),),
        partial_id=(1, 2, 3, 4, 5),
    )
    data = json.loads(snap.to_json())
    assert set(data) == {f.name for f in fields(Snapshot)}
    assert data["phase"] == "transferring"
    assert data["error"] == {
        "code": "read_error",
        "message": "reset",
        "task_id": None,
        "status_code": None,
    }
    assert data["response_body"] == "AP8="
    assert data["segments"] == [[0, 5, 10]]


def test_keys_an_older_snapshot_lacks_take_their_defaults() -> None:
    assert Snapshot.from_json('{"phase": "queued"}') == Snapshot()
    assert Snapshot.from_json("{}") == Snapshot()
    assert Spec.from_json('{"url": "https://x/"}') == Spec("https://x/")


@pytest.mark.parametrize(
    ("cls", "text"),
    [
        (Snapshot, "not json"),
        (Snapshot, "[1, 2]"),
        (Snapshot, '{"phase": "finishing"}'),
        (Snapshot, '{"offset": "many"}'),
        (Snapshot, '{"total": 1.5}'),
        (Snapshot, '{"total": true}'),
        (Snapshot, '{"etag": 7}'),
        (Snapshot, '{"response_body": "***"}'),
        (Snapshot, '{"segments": [[1, 2]]}'),
        (Snapshot, '{"response_headers": [["a", 1]]}'),
        (Snapshot, '{"surprise": 1}'),
        (Spec, "{}"),
        (Spec, '{"url": "https://x/", "surprise": 1}'),
        (Spec, '{"url": "https://x/", "headers": [["a"]]}'),
        (Spec, b"\xff"),
    ],
)
def test_what_is_not_a_spec_or_snapshot_is_refused_clearly(
    cls: type[Spec] | type[Snapshot], text: str | bytes
) -> None:
    with pytest.raises(InvalidRequest, match=f"not a task {cls.__name__.lower()}"):
        cls.from_json(text)


def test_the_defaults_are_the_specs() -> None:
    spec = Spec("https://x/")
    assert (spec.request_timeout, spec.resource_timeout) == (D.REQUEST_TIMEOUT, D.RESOURCE_TIMEOUT)
    assert (D.REQUEST_TIMEOUT, D.RESOURCE_TIMEOUT, D.MAX_RETRY_WAIT) == (60.0, 7 * 86400.0, 120.0)
    assert (spec.low_speed_limit, spec.low_speed_time) == (100, 120.0)
    assert (spec.retry_wait, spec.max_retry_wait) == (D.RETRY_WAIT, D.MAX_RETRY_WAIT)
    assert (spec.max_redirects, spec.max_restarts, spec.chunk_size) == (10, 5, 8 << 20)
