"""One codec for the events that cross the daemon's socket: Event.to_json / from_json."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgtransfer import Event, TaskState
from bgtransfer._exceptions import HTTPStatusError, NetworkError, TransferError
from bgtransfer._store._base import StoredEvent

_errors = st.none() | st.builds(
    lambda cls, msg, status: cls(msg, task_id="t1", status_code=status),
    st.sampled_from([TransferError, NetworkError, HTTPStatusError]),
    st.text(alphabet="abc xyz:/", max_size=30),
    st.none() | st.integers(100, 599),
)
_events = st.builds(
    Event,
    task_id=st.text(min_size=1, max_size=12),
    session=st.text(min_size=1, max_size=12),
    kind=st.sampled_from(["state", "progress"]),
    state=st.sampled_from(list(TaskState)),
    detail=st.text(alphabet="abcdef ghi", max_size=40),
    bytes_received=st.integers(0, 2**40),
    bytes_expected=st.none() | st.integers(0, 2**40),
    error=_errors,
    cursor=st.none() | st.integers(1, 2**31),
    metadata=st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _same(a: Event, b: Event) -> None:
    assert (a.task_id, a.session, a.kind, a.state, a.detail) == (
        b.task_id,
        b.session,
        b.kind,
        b.state,
        b.detail,
    )
    assert (a.bytes_received, a.bytes_expected, a.cursor, a.metadata) == (
        b.bytes_received,
        b.bytes_expected,
        b.cursor,
        b.metadata,
    )
    assert type(a.error) is type(b.error)
    if a.error is not None and b.error is not None:
        assert (a.error.message, a.error.status_code) == (b.error.message, b.error.status_code)


@given(_events)
def test_an_event_survives_the_wire_with_its_error_class(ev: Event) -> None:
    _same(Event.from_json(ev.to_json()), ev)


def test_passwords_in_urls_never_leave_in_an_event() -> None:
    ev = Event(
        task_id="t",
        session="s",
        kind="state",
        state=TaskState.COMPLETED,
        detail="failed: http://user:hunter2@example.test/f",
        bytes_received=0,
        bytes_expected=None,
        error=NetworkError("cannot reach http://user:hunter2@example.test/f"),
    )
    wire = ev.to_json()
    assert "hunter2" not in repr(wire)
    back = Event.from_json(wire)
    assert isinstance(back.error, NetworkError)
    assert "hunter2" not in back.detail


def test_a_logged_state_event_is_the_public_event() -> None:
    stored = StoredEvent(7, "s", "t", "suspended", "suspended", "paused", 10, 20, None, 1.0)
    ev = stored.to_event()
    assert (ev.kind, ev.state, ev.cursor, ev.bytes_expected) == (
        "state",
        TaskState.SUSPENDED,
        7,
        20,
    )
