"""``request.upload``: progress events of a request body, as XMLHttpRequestUpload has them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bgtransfer.voltmx._callbacks import call_handler
from bgtransfer.voltmx._errors import bad_type

__all__ = ["EVENT_TYPES", "HttpRequestUpload", "ProgressEvent"]

EVENT_TYPES = frozenset({"loadstart", "progress", "load", "error", "abort", "timeout", "loadend"})


@dataclass(frozen=True)
class ProgressEvent:
    type: str
    lengthComputable: bool
    loaded: int
    total: int
    target: HttpRequestUpload


Listener = Callable[[ProgressEvent], object]


class HttpRequestUpload:
    """What ``request.upload`` is: listeners for the body's loadstart, progress, load, error,
    abort, timeout and loadend events (only requests that send a body fire them)."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def addEventListener(self, type: str, listener: Listener) -> None:
        if not isinstance(type, str) or type not in EVENT_TYPES:
            raise bad_type(f"event type must be one of {sorted(EVENT_TYPES)}", type)
        if not callable(listener):
            raise bad_type("listener must be callable", listener)
        bucket = self._listeners.setdefault(type, [])
        if listener not in bucket:  # the DOM ignores a second registration of the same pair
            bucket.append(listener)

    def removeEventListener(self, type: str, listener: Listener) -> None:
        bucket = self._listeners.get(type, [])
        if listener in bucket:
            bucket.remove(listener)

    def _dispatch(self, type: str, loaded: int, total: int | None) -> None:
        event = ProgressEvent(type, total is not None, loaded, total or 0, self)
        for listener in list(self._listeners.get(type, ())):
            call_handler(listener, event)
