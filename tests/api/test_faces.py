"""The sync and async faces offer the same API (issue 15): same public names, same
parameters (names, kinds, defaults, annotations), the async one as coroutines.

A difference between the faces is a defect unless it is listed below with its reason."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import bgtransfer
from bgtransfer import AsyncSession, AsyncTask, Session, Task

# Names only one face has, and why.
ONLY_ASYNC_SESSION = {
    "open": "a Session opens in its constructor; an AsyncSession cannot await there",
    "aclose": "asyncio spelling of close() (httpx: Client.close / AsyncClient.aclose)",
    "events": "an async iterator of live events; the contract gives it to AsyncSession only",
}
ONLY_SYNC_SESSION = {
    "close": "sync spelling of aclose()",
    "closed": "a Session is open from construction to close(); its Tasks and Jobs read it "
    "to keep their last values after close",
}
ONLY_ASYNC_TASK = {
    "refresh": "an AsyncTask of a background session shows the daemon's last answer until "
    "refreshed; a Task reads fresh on every field access",
}
ONLY_SYNC_TASK: dict[str, str] = {}
ONLY_ASYNC_JOB = {
    "refresh": "an AsyncJob shows the daemon's last answer until refreshed; a Job's "
    "next_run is a fresh read",
}
ONLY_SYNC_JOB: dict[str, str] = {}

# Methods of the async face that return at once (no await): an iterator, or what is known
# already (no I/O).
NOT_COROUTINES = {"events", "to_dict"}


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def instance_attributes(cls: type) -> set[str]:
    """Public attributes set in __init__ (``self.x = ...``), read from the source."""
    source = inspect.getsource(cls.__init__)  # type: ignore[misc]
    names = set()
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("self.") and "=" in stripped:
            name = stripped[5:].split("=")[0].split(",")[0].strip()
            if not name.startswith("_"):
                names.add(name)
    return names


def names(cls: type) -> set[str]:
    return public(cls) | instance_attributes(cls)


@pytest.mark.parametrize(
    ("sync", "asyn", "only_sync", "only_async"),
    [
        (Session, AsyncSession, ONLY_SYNC_SESSION, ONLY_ASYNC_SESSION),
        (Task, AsyncTask, ONLY_SYNC_TASK, ONLY_ASYNC_TASK),
        (bgtransfer.Job, bgtransfer.AsyncJob, ONLY_SYNC_JOB, ONLY_ASYNC_JOB),
    ],
)
def test_the_faces_have_the_same_public_names(
    sync: type, asyn: type, only_sync: dict[str, str], only_async: dict[str, str]
) -> None:
    assert names(sync) - names(asyn) == set(only_sync)
    assert names(asyn) - names(sync) == set(only_async)


def test_sessions_have_their_attributes() -> None:
    # The check above reads attributes from __init__: make sure it found them at all.
    assert {"identifier", "home", "background"} <= instance_attributes(Session)
    assert {"identifier", "home", "background"} <= instance_attributes(AsyncSession)


def _same_face(annotation: Any) -> str:
    """An annotation with the async face's classes named as the sync face's."""
    text = str(annotation)
    for a, s in (("AsyncTask", "Task"), ("AsyncJob", "Job"), ("AsyncSession", "Session")):
        text = text.replace(a, s)
    return text


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any, str]]:
    sig = inspect.signature(fn)
    return [
        (p.name, p.kind, p.default, _same_face(p.annotation))
        for p in sig.parameters.values()
        if p.name != "self"
    ]


def shared_methods(sync: type, asyn: type) -> list[str]:
    both = public(sync) & public(asyn)
    return sorted(n for n in both if callable(getattr(sync, n)) and callable(getattr(asyn, n)))


PAIRS = [(Session, AsyncSession), (Task, AsyncTask), (bgtransfer.Job, bgtransfer.AsyncJob)]


@pytest.mark.parametrize(("sync", "asyn"), PAIRS)
def test_shared_methods_take_the_same_parameters(sync: type, asyn: type) -> None:
    methods = [*shared_methods(sync, asyn), "__init__"]
    assert len(methods) >= 4  # the comparison covers the API, not an empty set
    for name in methods:
        if sync is not Session and name == "__init__":
            continue  # built by the faces from their own session objects, never by users
        assert _parameters(getattr(sync, name)) == _parameters(getattr(asyn, name)), name


@pytest.mark.parametrize(("sync", "asyn"), PAIRS)
def test_the_async_face_awaits_and_the_sync_face_blocks(sync: type, asyn: type) -> None:
    for name in shared_methods(sync, asyn):
        a, s = getattr(asyn, name), getattr(sync, name)
        if name in NOT_COROUTINES or a is s:
            continue  # ``a is s``: one shared reader on the view (to_dict), no I/O
        assert inspect.iscoroutinefunction(a) or inspect.isasyncgenfunction(a), name
        assert not inspect.iscoroutinefunction(s), name
        assert not inspect.isasyncgenfunction(s), name


def test_only_listed_methods_are_not_coroutines() -> None:
    assert not inspect.iscoroutinefunction(AsyncSession.events)
    assert not inspect.iscoroutinefunction(bgtransfer.AsyncJob.to_dict)


def test_task_fields_are_shared_properties() -> None:
    # Every field is defined once, on the view both faces derive from.
    fields = ["id", "state", "bytes_received", "bytes_expected", "status_code", "error"]
    for name in [*fields, "detail", "metadata", "options", "response_headers"]:
        assert isinstance(getattr(Task, name), property), name
        assert getattr(Task, name) is getattr(AsyncTask, name), name
    assert set(fields) <= public(bgtransfer.Task)
