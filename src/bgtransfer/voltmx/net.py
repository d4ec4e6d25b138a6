"""``voltmx.net``: HttpRequest, FormData and the namespace functions, over bgtransfer sessions.

Built on bgtransfer's public API. A request with ``backgroundTransfer = True`` is a task of a
background session (it runs in the daemon and outlives the script); without it the request
runs in this process through a foreground session, with the same engine underneath. A GET is
a download into a file; any other request is an upload of its body, spooled to a file first.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import bgtransfer
from bgtransfer import InvalidTransition, TaskState
from bgtransfer.voltmx import _cookies, _integrity, _response, constants
from bgtransfer.voltmx._callbacks import call_handler
from bgtransfer.voltmx._errors import (
    InvalidStateError,
    VoltMXError,
    VoltMXSyntaxError,
    bad_type,
    check_open,
    missing,
)
from bgtransfer.voltmx._exchange import Exchange, files_of, start
from bgtransfer.voltmx._formdata import FormData
from bgtransfer.voltmx._functions import (
    clearCookies,
    disableIntegrityCheck,
    getCookies,
    isNetworkAvailable,
    removeIntegrityCheck,
    setCookies,
    setIntegrityCheck,
)
from bgtransfer.voltmx._redirects import follow
from bgtransfer.voltmx._sessions import DEFAULT_SESSION, NO_LIMIT, OPTIONS, seconds, warn_option
from bgtransfer.voltmx._sessions import session as _session
from bgtransfer.voltmx._upload_events import HttpRequestUpload, ProgressEvent

__all__ = [
    "BackgroundSession",
    "FormData",
    "HttpRequest",
    "HttpRequestUpload",
    "InvalidStateError",
    "ProgressEvent",
    "VoltMXError",
    "VoltMXSyntaxError",
    "cancel",
    "clearCookies",
    "disableIntegrityCheck",
    "getCookies",
    "isNetworkAvailable",
    "removeIntegrityCheck",
    "setCookies",
    "setIntegrityCheck",
]

_POLL = 0.05
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match


class HttpRequest:
    """``new voltmx.net.HttpRequest(requestOptions)`` or ``HttpRequest(sessionId)``."""

    def __init__(
        self,
        requestOptions: Mapping[str, Any] | str | None = None,
        *,
        sessionIdentifier: str | None = None,
        home: str | None = None,
    ) -> None:
        ident, background = sessionIdentifier, False
        options: Mapping[str, Any] = {}
        if isinstance(requestOptions, str):
            # HttpRequest(sessionId): join that background session (session_configuration_api).
            if not requestOptions:
                raise bad_type("a session id must be a non-empty string", requestOptions)
            ident, background = requestOptions, True
        elif isinstance(requestOptions, Mapping):
            options = requestOptions
        elif requestOptions is not None:
            raise bad_type("requestOptions must be an object or a session id", requestOptions)
        for key in sorted(set(map(str, options)) - OPTIONS):
            warn_option(key)
        self._request_timeout = seconds(
            "timeoutIntervalForRequest", options.get("timeoutIntervalForRequest", 60)
        )
        self._resource_timeout = seconds(
            "timeoutIntervalForResource", options.get("timeoutIntervalForResource", 7 * 86400)
        )
        ident = ident or options.get("sessionIdentifier") or DEFAULT_SESSION
        if not isinstance(ident, str):
            raise bad_type("sessionIdentifier must be a string", ident)
        self._identifier, self._home, self._background = ident, home, background
        self._ready = constants.HTTP_READY_STATE_UNSENT
        self._method = self._url = ""
        self._async = True
        self._headers: list[tuple[str, str]] = []
        self._ex: Exchange | None = None
        self._aborted = False
        self._status = 0
        self._status_text = ""
        self._response_headers: list[tuple[str, str]] | None = None
        self._response_type = ""
        self._integrity = constants.HTTP_INTEGRITY_CHECK_NOT_DONE
        self._failed = False
        self._download_path: str | None = None
        self._timeout_ms = 0
        self._lock = threading.RLock()
        self.disableIntegrityCheck = False
        self.upload = HttpRequestUpload()
        self.onReadyStateChange: Callable[..., object] | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def backgroundTransfer(self) -> bool:
        return self._background

    @backgroundTransfer.setter
    def backgroundTransfer(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise bad_type("backgroundTransfer must be true or false", value)
        if self._ready != constants.HTTP_READY_STATE_UNSENT or self._ex is not None:
            raise InvalidStateError(
                "backgroundTransfer has to be set before open() is invoked "
                "(set it right after creating the HttpRequest)"
            )
        self._background = value

    @property
    def timeoutIntervalForRequest(self) -> float:
        return 0 if self._request_timeout == NO_LIMIT else self._request_timeout

    @timeoutIntervalForRequest.setter
    def timeoutIntervalForRequest(self, value: float) -> None:
        self._before_send("timeoutIntervalForRequest")
        self._request_timeout = seconds("timeoutIntervalForRequest", value)

    @property
    def timeoutIntervalForResource(self) -> float:
        return 0 if self._resource_timeout == NO_LIMIT else self._resource_timeout

    @timeoutIntervalForResource.setter
    def timeoutIntervalForResource(self, value: float) -> None:
        self._before_send("timeoutIntervalForResource")
        self._resource_timeout = seconds("timeoutIntervalForResource", value)

    @property
    def readyState(self) -> int:
        return self._ready

    @property
    def status(self) -> int:
        return self._status

    @property
    def statusText(self) -> str:
        """The reason phrase the server sent; "" before send() and without a response."""
        return self._status_text

    @property
    def responseType(self) -> str:
        """Read-only: "" until the response arrives, then from its Content-Type."""
        return self._response_type

    @property
    def integrityStatus(self) -> int:
        return self._integrity

    @property
    def timeout(self) -> int:
        """Milliseconds (0: none); foreground requests only, as on iOS."""
        return self._timeout_ms

    @timeout.setter
    def timeout(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad_type("timeout must be a number of milliseconds >= 0", value)
        self._timeout_ms = int(value)

    @property
    def downloadPath(self) -> str | None:
        """Extension: where a GET's body is stored (default: a file in the bgtransfer home)."""
        return self._download_path

    @downloadPath.setter
    def downloadPath(self, value: str | os.PathLike[str]) -> None:
        self._before_send("downloadPath")
        self._download_path = os.path.abspath(os.fspath(value))

    @property
    def responseFile(self) -> str | None:
        """Extension: the file holding the response body once DONE (None without one)."""
        ex = self._ex
        if self._ready != constants.HTTP_READY_STATE_DONE or ex is None or self._aborted:
            return None
        return ex.response_path()

    def _body(self) -> bytes | None:
        path = self.responseFile
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    @property
    def response(self) -> Any:
        """The body typed by ``responseType``: parsed JSON (None if it does not parse), str
        (TEXT, DOCUMENT) or bytes (RAWDATA). None before DONE; "" after a failure."""
        if self._ready != constants.HTTP_READY_STATE_DONE:
            return None
        raw = self._body()
        if raw is None:
            return (
                ""
                if self._failed or not self._response_type
                else (_response.decode(b"", self._response_type, self._ctype()))
            )
        return _response.decode(raw, self._response_type, self._ctype())

    @property
    def responseText(self) -> str:
        """The body as text (charset from Content-Type, else UTF-8); "" before DONE."""
        raw = self._body() if self._ready == constants.HTTP_READY_STATE_DONE else None
        return "" if raw is None else raw.decode(_response.charset(self._ctype()), "replace")

    @property
    def task(self) -> bgtransfer.Task | None:
        """Extension: the bgtransfer Task behind the request, once sent."""
        return None if self._ex is None else self._ex.task

    # -- methods ---------------------------------------------------------------------------

    def open(
        self,
        method: str | None = None,
        url: str | None = None,
        async_: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """Errors 101 (fewer than two arguments), 100 (not strings), SyntaxError (a method
        other than the HTTP_METHOD_* ones, or a URL that is not absolute http(s))."""
        method, url = check_open(method, url, username, password)
        with self._lock:
            old, self._ex = self._ex, None
            if old is not None:  # open() after send(): terminate it and start over (docs)
                old.done.set()
                try:
                    old.task.cancel()
                except InvalidTransition:
                    pass
                old.drop_body()
            self._method, self._url, self._async = method.upper(), url, bool(async_)
            self._headers = []
            self._aborted = self._failed = False
            self._status, self._status_text, self._response_type = 0, "", ""
            self._response_headers = None
            self._integrity = constants.HTTP_INTEGRITY_CHECK_NOT_DONE
            if username is not None:
                token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
                self._headers.append(("Authorization", f"Basic {token}"))
            self._set_ready(constants.HTTP_READY_STATE_OPENED)

    def setRequestHeader(self, header: str | None = None, value: str | None = None) -> None:
        if header is None or value is None:
            raise missing("setRequestHeader()", "a header name and a value")
        if not isinstance(header, str) or not isinstance(value, str):
            raise bad_type("header name and value must be strings", (header, value))
        if self._ready != constants.HTTP_READY_STATE_OPENED or self._ex is not None:
            raise InvalidStateError(
                "setRequestHeader() must be called after open() and before send()"
            )
        if not _TOKEN(header):
            raise VoltMXError(100, f"header name is not a valid HTTP token: {header!r}")
        if any(c in value for c in "\r\n\0"):
            raise VoltMXError(100, f"header {header!r} value must not contain CR, LF or NUL")
        for i, (k, v) in enumerate(self._headers):
            if k.lower() == header.lower():  # repeated: joined with ", " (docs)
                self._headers[i] = (k, f"{v}, {value}")
                return
        self._headers.append((header, value))

    def send(self, data: object = None) -> None:
        """Start the request. ``data`` (ignored for GET and HEAD): a string, bytes, a JSON
        object (dict or list), or a FormData."""
        if self._ready != constants.HTTP_READY_STATE_OPENED or self._ex is not None:
            raise InvalidStateError(
                "send() must be called once, after open()"
                if self._ex is None
                else "send() was already called for this request"
            )
        session = _session(self._identifier, self._home, self._background)
        headers = list(self._headers)
        if not any(k.lower() == "cookie" for k, _ in headers):
            cookie = _cookies.cookie_header(session.home, self._url)
            if cookie:
                headers.append(("Cookie", cookie))
        resource = self._resource_timeout
        if not self._background and self._timeout_ms:
            resource = min(resource, self._timeout_ms / 1000)
        # Foreground requests are tried once, as the platforms' foreground calls are; a
        # background session retries (NSURLSession does) under the engine's rules.
        common: dict[str, Any] = {
            "request_timeout": self._request_timeout,
            "resource_timeout": resource,
            "max_attempts": None if self._background else 1,
        }
        base = self._spool_base(session.home)
        check = _integrity.for_request(self._url, self.disableIntegrityCheck)
        given = None if self._method == constants.HTTP_METHOD_HEAD else data
        ex = start(
            session, self._method, self._url, headers, given, base, check, common,
            self._download_path,
        )  # fmt: skip
        ex.check, ex.method, ex.headers, ex.options = check, self._method, self._headers, common
        with self._lock:
            self._ex = ex
            if ex.has_body:
                self.upload._dispatch("loadstart", 0, ex.total)
        threading.Thread(target=self._watch, args=(ex,), name="voltmx-request", daemon=True).start()
        if not self._async:
            self.wait()

    def abort(self) -> None:
        """Cancel the request: DONE fires (if it was in flight), then the state is UNSENT."""
        with self._lock:
            ex = self._ex
            if ex is not None and self._ready != constants.HTTP_READY_STATE_DONE:
                self._aborted = True
                try:
                    ex.task.cancel()
                except InvalidTransition:
                    pass
                ex.drop_body()
                self._status, self._status_text, self._response_headers = 0, "", None
                self._set_ready(constants.HTTP_READY_STATE_DONE)
                if ex.has_body:
                    self.upload._dispatch("abort", ex.sent, ex.total)
                    self.upload._dispatch("loadend", ex.sent, ex.total)
                ex.done.set()
            self._ready = constants.HTTP_READY_STATE_UNSENT
            self._status = 0

    def getResponseHeader(self, headerfield: str | None = None) -> str | None:
        """The header's value; None before headers, on failure, and for Set-Cookie(2)."""
        if headerfield is None:
            raise missing("getResponseHeader()", "a header name")
        if not isinstance(headerfield, str):
            raise bad_type("the header name must be a string", headerfield)
        headers = self.getAllResponseHeaders()
        return None if headers is None else headers.get(headerfield.lower())

    def getAllResponseHeaders(self) -> dict[str, str] | None:
        """name (lower case) -> value, without Set-Cookie and Set-Cookie2; None before the
        headers arrive and when the request failed."""
        pairs = self._response_headers
        if (
            pairs is None
            or self._failed
            or self._ready < constants.HTTP_READY_STATE_HEADERS_RECEIVED
        ):
            return None
        return _response.header_map(pairs)

    # -- background transfer members (seed) ------------------------------------------------

    def getSession(self) -> str:
        """The identifier of the background session the request belongs to."""
        return self._identifier

    def _background_task(self, member: str) -> bgtransfer.Task:
        if not self._background:
            raise InvalidStateError(
                f"{member}() is applicable only if backgroundTransfer = true for the request"
            )
        if self._ex is None:
            raise InvalidStateError(f"{member}() needs a sent request: call send() first")
        return self._ex.task

    def suspend(self) -> None:
        task = self._background_task("suspend")
        try:
            task.suspend()
        except InvalidTransition:
            pass  # already completed: nothing to suspend, as on iOS

    def resume(self) -> None:
        task = self._background_task("resume")
        try:
            task.resume()
        except InvalidTransition:
            pass  # already completed: nothing to resume, as on iOS

    def getTaskState(self) -> constants.SessionTaskState:
        return constants.SessionTaskState[self._background_task("getTaskState").state.name]

    # -- extensions --------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> HttpRequest:
        """Extension: block until readyState is DONE (and its callback has run)."""
        ex = self._ex
        if ex is None:
            raise InvalidStateError("wait() needs a sent request: call send() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        while ex is not None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not ex.done.wait(left):
                raise TimeoutError(f"the request was not DONE within {timeout} s")
            ex = None if self._ex is ex else self._ex  # a followed redirect goes on
        return self

    def acknowledge(self) -> None:
        """Extension: the app has handled this completion; it is no longer reported."""
        if self._ex is None:
            raise InvalidStateError("acknowledge() needs a sent request")
        self._ex.task.acknowledge()

    # -- internals ---------------------------------------------------------------------------

    @classmethod
    def _attach(cls, session: BackgroundSession, task: bgtransfer.Task) -> HttpRequest:
        req = cls(sessionIdentifier=session.identifier, home=session.home)
        req._background = True
        req._method = constants.HTTP_METHOD_GET if task.kind == "download" else "POST"
        req._url = task.url
        body_file, answer = files_of(task)
        home = bgtransfer.resolve_home(session.home)
        ex = Exchange(task, home, body_file, answer)
        req._ex, req._ready = ex, constants.HTTP_READY_STATE_OPENED
        threading.Thread(target=req._watch, args=(ex,), name="voltmx-request", daemon=True).start()
        return req

    def _before_send(self, member: str) -> None:
        if self._ex is not None:
            raise InvalidStateError(f"{member} must be set before send()")

    def _spool_base(self, home: str) -> str:
        directory = os.path.join(home, "voltmx", self._identifier)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, uuid.uuid4().hex)

    def _ctype(self) -> str | None:
        return _response.header_map(self._response_headers or ()).get("content-type")

    def _set_ready(self, state: int) -> None:
        self._ready = state
        if self.onReadyStateChange is not None:
            call_handler(self.onReadyStateChange, self)

    def _advance(self, target: int) -> None:
        # Never skip a state: 2, 3 and 4 each fire once, in order.
        while self._ready < target and not self._aborted:
            self._set_ready(self._ready + 1)

    def _headers_in(self, task: bgtransfer.Task, status: int) -> None:
        self._status = status
        self._status_text = task.response_reason or ""
        self._response_headers = list(task.response_headers.items())
        self._response_type = _response.detect_type(self._ctype())

    def _watch(self, ex: Exchange) -> None:
        task = ex.task
        try:
            while self._ex is ex and not self._aborted:
                state, status = task.state, task.response_status
                with self._lock:
                    if self._ex is not ex or self._aborted:
                        return
                    if ex.has_body and task.bytes_sent > ex.sent:
                        ex.sent = task.bytes_sent
                        self.upload._dispatch("progress", ex.sent, ex.total)
                    if state is TaskState.COMPLETED:
                        self._finish(ex)
                        return
                    if (
                        status is not None
                        and self._ready < constants.HTTP_READY_STATE_HEADERS_RECEIVED
                    ):
                        self._headers_in(task, status)
                        self._advance(constants.HTTP_READY_STATE_HEADERS_RECEIVED)
                    if task.bytes_received > 0 and status is not None:
                        self._advance(constants.HTTP_READY_STATE_LOADING)
                ex.done.wait(_POLL)
        except bgtransfer.TransferError:
            traceback.print_exc(file=sys.stderr)
            ex.done.set()

    def _finish(self, ex: Exchange) -> None:
        task = ex.task
        err, status = task.error, task.response_status
        if status and isinstance(err, bgtransfer.HTTPStatusError | None) and self._follow(ex):
            return
        ex.drop_body()
        if isinstance(err, bgtransfer.Cancelled):
            self._status, self._status_text, self._response_headers = 0, "", None
            self._set_ready(constants.HTTP_READY_STATE_DONE)
            self._upload_end(ex, "abort")
        elif status and (err is None or isinstance(err, bgtransfer.HTTPStatusError)):
            self._headers_in(task, status)
            _cookies.store(ex.home, task.url, self._response_headers or ())
            check = ex.check
            if check is not None and check.validate:
                self._integrity = _integrity.check_response(
                    check, self._response_headers or (), ex.response_path()
                )
            if ex.has_body and ex.total is not None and ex.sent < ex.total:
                ex.sent = ex.total  # the last piece went out between two polls
                self.upload._dispatch("progress", ex.sent, ex.total)
            self._upload_end(ex, "load")
            self._advance(constants.HTTP_READY_STATE_DONE)
        else:
            # Network or DNS failure (docs, send): a status such as 410 and a HEADERS_RECEIVED
            # event, then DONE. A timeout gets 408, which kony_sdk.js reads as "timed out".
            timeout = isinstance(err, bgtransfer.TransferTimeout)
            if isinstance(err, bgtransfer.IntegrityError) and ex.check and ex.check.validate:
                # The engine checked the server's digests itself (issue 17) and refused them.
                self._integrity = constants.HTTP_INTEGRITY_CHECK_FAILED
            self._failed = True
            self._status = 408 if timeout else 410
            self._status_text = err.message if err is not None else "request failed"
            self._response_headers = None
            self._set_ready(constants.HTTP_READY_STATE_HEADERS_RECEIVED)
            self._upload_end(ex, "timeout" if timeout else "error")
            self._set_ready(constants.HTTP_READY_STATE_DONE)
        ex.done.set()

    def _follow(self, ex: Exchange) -> bool:
        session = _session(self._identifier, self._home, self._background)
        nxt = follow(ex, session, self._spool_base(session.home))
        if nxt is None:
            return False
        if nxt.body_file != ex.body_file:
            ex.drop_body()
        if ex.has_body and not nxt.has_body:
            self._upload_end(ex, "load")  # the body went out; the rest is a GET
        self._ex = nxt
        ex.done.set()  # wait() moves on to the next exchange
        threading.Thread(
            target=self._watch, args=(nxt,), name="voltmx-request", daemon=True
        ).start()
        return True

    def _upload_end(self, ex: Exchange, kind: str) -> None:
        if ex.has_body:
            self.upload._dispatch(kind, ex.sent, ex.total)
            self.upload._dispatch("loadend", ex.sent, ex.total)


def cancel(connHandle: object = None) -> None:
    """``voltmx.net.cancel(connHandle)``: aborts an HttpRequest; other values are ignored."""
    if isinstance(connHandle, HttpRequest):
        connHandle.abort()


class BackgroundSession:
    """Extension: the background session a ``getSession()`` identifier names.

    Re-creating it in a later process (same identifier and home) reconnects to its tasks,
    as an iOS app relaunched for its background session does.
    """

    def __init__(self, identifier: str = DEFAULT_SESSION, *, home: str | None = None) -> None:
        self.identifier = identifier
        self.home = home

    def __str__(self) -> str:
        return self.identifier

    def __repr__(self) -> str:
        return f"BackgroundSession({self.identifier!r})"

    def getTasks(self) -> list[HttpRequest]:
        """Every request of this session, finished or not, as HttpRequest objects."""
        tasks = _session(self.identifier, self.home, True).tasks()
        return [HttpRequest._attach(self, t) for t in tasks]

    def getCompletedRequests(self) -> list[HttpRequest]:
        """Requests that completed and were not acknowledged (``request.acknowledge()``):
        what finished while the app was away."""
        done = [
            t
            for t in _session(self.identifier, self.home, True).tasks()
            if t.state is TaskState.COMPLETED and not t.acknowledged
        ]
        return [HttpRequest._attach(self, t) for t in done]
