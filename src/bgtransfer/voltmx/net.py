"""``voltmx.net.HttpRequest``: the Volt MX / XMLHttpRequest API over bgtransfer sessions.

Built only on bgtransfer's public API. A request with ``backgroundTransfer = True`` becomes a
task of a background session (it runs in the daemon and outlives the script); without it the
request runs in this process through a foreground session, with the same engine underneath.
"""

from __future__ import annotations

import atexit
import http
import json
import os
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import bgtransfer
from bgtransfer import InvalidRequest, InvalidTransition, TaskState
from bgtransfer.voltmx import constants

__all__ = ["BackgroundSession", "HttpRequest", "InvalidStateError"]

DEFAULT_SESSION = "com.bgtransfer.voltmx"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_POLL = 0.05


class InvalidStateError(InvalidTransition):
    """A member was used at a point of the request's life where XHR forbids it."""

    code = "invalid_state"


_sessions: dict[tuple[str, str, bool], bgtransfer.Session] = {}
_sessions_lock = threading.Lock()


def _session(identifier: str, home: str | None, background: bool) -> bgtransfer.Session:
    resolved = bgtransfer.resolve_home(home)
    key = (identifier, resolved, background)
    with _sessions_lock:
        s = _sessions.get(key)
        if s is None:
            s = bgtransfer.Session(identifier, home=resolved, background=background)
            _sessions[key] = s
        return s


@atexit.register
def _close_sessions() -> None:
    # Foreground requests stop with the process (resumable later); background ones go on.
    with _sessions_lock:
        for s in _sessions.values():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
        _sessions.clear()


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequest(f"{name} must be a positive number of seconds, not {value!r}")
    if value != value or value == float("inf"):
        raise InvalidRequest(f"{name} must be a finite number of seconds, not {value!r}")
    return float(value)


class BackgroundSession:
    """What ``getSession()`` returns: the session a request's task belongs to.

    Re-creating it in a later process (same identifier and home) reconnects to its tasks,
    as an iOS app relaunched for its background session does.
    """

    def __init__(self, identifier: str = DEFAULT_SESSION, *, home: str | None = None) -> None:
        self.identifier = identifier
        self.home = home

    def __str__(self) -> str:
        return f"BackgroundSession({self.identifier})"

    __repr__ = __str__

    def _session(self) -> bgtransfer.Session:
        return _session(self.identifier, self.home, True)

    def getTasks(self) -> list[HttpRequest]:
        """Every request of this session, finished or not, as HttpRequest objects."""
        return [HttpRequest._attach(self, t) for t in self._session().tasks()]

    def getCompletedRequests(self) -> list[HttpRequest]:
        """Requests that completed and were not acknowledged (``request.acknowledge()``):
        what finished while the app was away."""
        done = [
            t
            for t in self._session().tasks()
            if t.state is TaskState.COMPLETED and not t.acknowledged
        ]
        return [HttpRequest._attach(self, t) for t in done]


class HttpRequest:
    """``new voltmx.net.HttpRequest(config)``, with XMLHttpRequest's members."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        sessionIdentifier: str | None = None,
        home: str | None = None,
    ) -> None:
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise InvalidRequest(f"config must be a dict, not {type(config).__name__}")
        known = {"timeoutIntervalForRequest", "timeoutIntervalForResource", "sessionIdentifier"}
        unknown = set(config) - known
        if unknown:
            raise InvalidRequest(f"unknown config keys: {', '.join(sorted(map(str, unknown)))}")
        self._request_timeout = _seconds(
            "timeoutIntervalForRequest", config.get("timeoutIntervalForRequest", 60)
        )
        self._resource_timeout = _seconds(
            "timeoutIntervalForResource", config.get("timeoutIntervalForResource", 7 * 86400)
        )
        ident = sessionIdentifier or config.get("sessionIdentifier") or DEFAULT_SESSION
        if not isinstance(ident, str):
            raise InvalidRequest(f"sessionIdentifier must be a string, not {ident!r}")
        self._identifier = ident
        self._home = home
        self._background = False
        self._ready = constants.HTTP_READY_STATE_UNSENT
        self._method = ""
        self._url = ""
        self._async = True
        self._headers: list[tuple[str, str]] = []
        self._task: bgtransfer.Task | None = None
        self._sent = False
        self._aborted = False
        self._status = 0
        self._response_headers: list[tuple[str, str]] = []
        self._response_type = constants.HTTP_RESPONSE_TYPE_TEXT
        self._download_path: str | None = None
        self._timeout_ms = 0
        self._done = threading.Event()
        self._lock = threading.RLock()
        self.onReadyStateChange: Callable[[HttpRequest], object] | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def backgroundTransfer(self) -> bool:
        return self._background

    @backgroundTransfer.setter
    def backgroundTransfer(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidRequest(f"backgroundTransfer must be True or False, not {value!r}")
        if self._ready != constants.HTTP_READY_STATE_UNSENT or self._sent:
            raise InvalidStateError(
                "backgroundTransfer has to be set before open() is invoked "
                "(set it right after creating the HttpRequest)"
            )
        self._background = value

    @property
    def readyState(self) -> int:
        return self._ready

    @property
    def status(self) -> int:
        return self._status

    @property
    def statusText(self) -> str:
        if not self._status:
            return ""
        try:
            return http.HTTPStatus(self._status).phrase
        except ValueError:
            return ""

    @property
    def responseType(self) -> str:
        return self._response_type

    @responseType.setter
    def responseType(self, value: str) -> None:
        if value not in constants.RESPONSE_TYPES:
            raise InvalidRequest(
                f"responseType must be one of {sorted(constants.RESPONSE_TYPES)}, not {value!r}"
            )
        if self._ready in (constants.HTTP_READY_STATE_LOADING, constants.HTTP_READY_STATE_DONE):
            raise InvalidStateError("responseType cannot change once the response is loading")
        self._response_type = value

    @property
    def timeout(self) -> int:
        """XHR's timeout in milliseconds (0: none) for foreground requests."""
        return self._timeout_ms

    @timeout.setter
    def timeout(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidRequest(f"timeout must be a non-negative number of ms, not {value!r}")
        self._timeout_ms = int(value)

    @property
    def downloadPath(self) -> str | None:
        """Extension: where the body is stored (default: a file in the bgtransfer home)."""
        return self._download_path

    @downloadPath.setter
    def downloadPath(self, value: str | os.PathLike[str]) -> None:
        if self._sent:
            raise InvalidStateError("downloadPath must be set before send()")
        self._download_path = os.path.abspath(os.fspath(value))

    @property
    def responseFile(self) -> str | None:
        """Extension: the path of the downloaded body once DONE (None on failure)."""
        t = self._task
        if self._ready != constants.HTTP_READY_STATE_DONE or t is None or self._aborted:
            return None
        return t.path if t.error is None else None

    @property
    def response(self) -> Any:
        """The body per ``responseType``, read from the file only when asked for."""
        path = self.responseFile
        if path is None:
            return None if self._response_type != constants.HTTP_RESPONSE_TYPE_TEXT else ""
        with open(path, "rb") as f:
            raw = f.read()
        if self._response_type == constants.HTTP_RESPONSE_TYPE_RAWDATA:
            return raw
        text = raw.decode(self._charset(), errors="replace")
        if self._response_type == constants.HTTP_RESPONSE_TYPE_JSON:
            try:
                return json.loads(text)
            except ValueError:
                return None  # XHR: a JSON response that does not parse is null
        return text

    @property
    def task(self) -> bgtransfer.Task | None:
        """Extension: the bgtransfer Task behind the request, once sent."""
        return self._task

    # -- XHR methods -----------------------------------------------------------------------

    def open(
        self,
        method: str,
        url: str,
        async_: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if self._sent:
            raise InvalidStateError(
                "open() after send(): a sent request cannot be reused; create a new HttpRequest"
            )
        if not isinstance(method, str) or method.upper() not in constants.HTTP_METHODS:
            raise InvalidRequest(
                f"unknown HTTP method {method!r}; use one of the constants.HTTP_METHOD_* values"
            )
        if not isinstance(url, str):
            raise InvalidRequest(f"URL must be a string, not {url!r}")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"URL must be an absolute http(s) URL: {url!r}")
        self._method, self._url, self._async = method.upper(), url, bool(async_)
        self._headers = []
        if username is not None:
            import base64

            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers.append(("Authorization", f"Basic {token}"))
        self._set_ready(constants.HTTP_READY_STATE_OPENED)

    def setRequestHeader(self, name: str, value: str) -> None:
        if self._ready != constants.HTTP_READY_STATE_OPENED or self._sent:
            raise InvalidStateError(
                "setRequestHeader() must be called after open() and before send()"
            )
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise InvalidRequest(f"header name is not a valid HTTP token: {name!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise InvalidRequest(f"header {name!r} value must be a string without CR/LF/NUL")
        self._headers.append((name, value))

    def send(self, data: object = None) -> None:
        if self._ready != constants.HTTP_READY_STATE_OPENED:
            raise InvalidStateError("send() must be called after open()")
        if self._sent:
            raise InvalidStateError("send() was already called for this request")
        if self._method != constants.HTTP_METHOD_GET:
            raise InvalidRequest(
                f"{self._method} requests are not supported yet: bgtransfer transfers "
                "downloads (GET); uploads come with a later version"
            )
        session = _session(self._identifier, self._home, self._background)
        path = self._download_path or self._default_path(session.home)
        resource = self._resource_timeout
        if not self._background and self._timeout_ms:
            resource = min(resource, self._timeout_ms / 1000)
        task = session.download(
            self._url,
            path,
            headers=self._headers,
            request_timeout=self._request_timeout,
            resource_timeout=resource,
        )
        self._task, self._sent = task, True
        threading.Thread(target=self._watch, name="voltmx-request", daemon=True).start()
        if not self._async:
            self.wait()

    def abort(self) -> None:
        with self._lock:
            if self._sent and self._ready != constants.HTTP_READY_STATE_DONE:
                self._aborted = True
                assert self._task is not None
                try:
                    self._task.cancel()
                except InvalidTransition:
                    pass
                self._status = 0
                self._response_headers = []
                self._set_ready(constants.HTTP_READY_STATE_DONE)
                self._done.set()
            self._ready = constants.HTTP_READY_STATE_UNSENT
            self._status = 0

    def getResponseHeader(self, name: str) -> str | None:
        if self._ready < constants.HTTP_READY_STATE_HEADERS_RECEIVED:
            return None
        values = [v for k, v in self._response_headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def getAllResponseHeaders(self) -> str:
        if self._ready < constants.HTTP_READY_STATE_HEADERS_RECEIVED:
            return ""
        lines = sorted((k.lower(), v) for k, v in self._response_headers)
        return "".join(f"{k}: {v}\r\n" for k, v in lines)

    # -- background transfer members (seed) ------------------------------------------------

    def getSession(self) -> BackgroundSession:
        return BackgroundSession(self._identifier, home=self._home)

    def _background_task(self, member: str) -> bgtransfer.Task:
        if not self._background:
            raise InvalidStateError(
                f"{member}() is applicable only if backgroundTransfer = true for the request"
            )
        if self._task is None:
            raise InvalidStateError(f"{member}() needs a sent request: call send() first")
        return self._task

    def suspend(self) -> None:
        try:
            self._background_task("suspend").suspend()
        except InvalidStateError:
            raise
        except InvalidTransition:
            pass  # already completed: nothing to suspend, as on iOS

    def resume(self) -> None:
        try:
            self._background_task("resume").resume()
        except InvalidStateError:
            raise
        except InvalidTransition:
            pass  # already completed: nothing to resume, as on iOS

    def getTaskState(self) -> TaskState:
        return self._background_task("getTaskState").state

    # -- extensions --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> HttpRequest:
        """Extension: block until readyState is DONE (and its callback has run)."""
        if not self._sent:
            raise InvalidStateError("wait() needs a sent request: call send() first")
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request was not DONE within {timeout} s")
        return self

    def acknowledge(self) -> None:
        """Extension: the app has handled this completion; it is no longer reported."""
        if self._task is None:
            raise InvalidStateError("acknowledge() needs a sent request")
        self._task.acknowledge()

    # -- internals ---------------------------------------------------------------------------

    @classmethod
    def _attach(cls, session: BackgroundSession, task: bgtransfer.Task) -> HttpRequest:
        req = cls(sessionIdentifier=session.identifier, home=session.home)
        req._background = True
        req._method, req._url = constants.HTTP_METHOD_GET, task.url
        req._task, req._sent = task, True
        req._ready = constants.HTTP_READY_STATE_OPENED
        threading.Thread(target=req._watch, name="voltmx-request", daemon=True).start()
        return req

    def _default_path(self, home: str) -> str:
        directory = os.path.join(home, "voltmx", self._identifier)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, f"{uuid.uuid4().hex}.body")

    def _charset(self) -> str:
        ctype = self.getResponseHeader("content-type") or ""
        m = re.search(r"charset=\"?([\w.-]+)", ctype, re.IGNORECASE)
        if m:
            import codecs

            try:
                return codecs.lookup(m.group(1)).name
            except LookupError:
                pass
        return "utf-8"

    def _set_ready(self, state: int) -> None:
        self._ready = state
        callback = self.onReadyStateChange
        if callback is not None:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - like a browser console: report, go on
                traceback.print_exc(file=sys.stderr)

    def _advance(self, target: int) -> None:
        # XHR never skips a state: 2, 3 and 4 each fire once, in order.
        while self._ready < target and not self._aborted:
            self._set_ready(self._ready + 1)

    def _watch(self) -> None:
        task = self._task
        assert task is not None
        try:
            while not self._aborted:
                state = task.state
                status = task.response_status
                with self._lock:
                    if self._aborted:
                        return
                    if (
                        status is not None
                        and self._ready < constants.HTTP_READY_STATE_HEADERS_RECEIVED
                    ):
                        self._status = status
                        self._response_headers = list(task.response_headers.items())
                        self._advance(constants.HTTP_READY_STATE_HEADERS_RECEIVED)
                    if task.bytes_received > 0 and status is not None:
                        self._advance(constants.HTTP_READY_STATE_LOADING)
                    if state is TaskState.COMPLETED:
                        self._finish(task)
                        return
                self._done.wait(_POLL)
        except bgtransfer.TransferError:
            traceback.print_exc(file=sys.stderr)
            self._done.set()

    def _finish(self, task: bgtransfer.Task) -> None:
        err = task.error
        if task.response_status and (err is None or isinstance(err, bgtransfer.HTTPStatusError)):
            self._status = task.response_status
            self._response_headers = list(task.response_headers.items())
            self._advance(constants.HTTP_READY_STATE_DONE)
        else:
            # XHR's "request error steps": a network error, a timeout or a cancel goes
            # straight to DONE with status 0 and no headers.
            self._status = 0
            self._response_headers = []
            self._set_ready(constants.HTTP_READY_STATE_DONE)
        self._done.set()
