"""The voltmx port against the real test server, in foreground and background mode."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import bgtransfer
from bgtransfer import Cancelled, InvalidRequest, TaskState
from bgtransfer import voltmx as vx
from bgtransfer.testing import FaultServer
from bgtransfer.voltmx import _sessions
from bgtransfer.voltmx.net import InvalidStateError, VoltMXError, VoltMXSyntaxError
from tests.daemon.conftest import kill_every_daemon

constants = vx.constants
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "voltmx"
BODY = b'{"guide": "iPhone App Programming Guide", "pages": 42}'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    monkeypatch.setenv("BGTRANSFER_HOME", str(h))
    yield h
    _sessions.close_sessions()
    kill_every_daemon(h)


@pytest.fixture(params=[False, True], ids=["foreground", "background"])
def background(request: pytest.FixtureRequest, home: Path) -> bool:
    return bool(request.param)


def new_request(background: bool, config: dict[str, object] | None = None) -> vx.net.HttpRequest:
    r = vx.net.HttpRequest(config)
    r.backgroundTransfer = background
    return r


def echo(server: FaultServer, **knobs: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in knobs.items())
    return server.url(f"/echo?{query}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ready_states_status_headers_and_response(
    server: FaultServer, background: bool, key: str
) -> None:
    url = echo(server, type="application/json", body=BODY.decode(), key=key)
    seen: list[tuple[int, int, str]] = []
    r = new_request(background)
    r.onReadyStateChange = lambda req: seen.append((req.readyState, req.status, req.responseType))
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT
    assert (r.status, r.statusText, r.responseType) == (0, "", "")
    assert r.getAllResponseHeaders() is None
    assert r.getResponseHeader("Content-Length") is None
    r.open(constants.HTTP_METHOD_GET, url)
    r.setRequestHeader("X-App", "demo")
    r.setRequestHeader("X-App", "second")  # a repeated name is joined with ", " (docs)
    r.send()
    assert r.response is None  # not DONE yet: nothing to type
    r.wait(timeout=30)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert seen[0][1:] == (0, "")
    assert seen[1][1:] == (200, constants.HTTP_RESPONSE_TYPE_JSON)
    assert (r.status, r.statusText) == (200, "OK")
    assert r.responseType == constants.HTTP_RESPONSE_TYPE_JSON
    assert r.response == json.loads(BODY)
    assert r.responseText == BODY.decode()
    assert r.getResponseHeader("Content-Length") == str(len(BODY))
    assert r.getResponseHeader("x-missing") is None
    headers = r.getAllResponseHeaders()
    assert isinstance(headers, dict)
    assert headers["content-length"] == str(len(BODY))
    assert headers["content-type"] == "application/json"
    assert Path(r.responseFile or "").read_bytes() == BODY
    req = [x for x in server.requests("/echo") if x.query.get("key") == key][-1]
    assert req.headers.get("x-app") == "demo, second"
    with pytest.raises(AttributeError):
        r.responseType = constants.HTTP_RESPONSE_TYPE_RAWDATA  # type: ignore[misc]


@pytest.mark.parametrize(
    ("content_type", "body", "rtype", "expected"),
    [
        ("text/plain; charset=utf-8", "caf\u00e9", "text", "caf\u00e9"),
        ("application/text", "plain", "text", "plain"),
        ("application/json", '{"a": [1, 2]}', "json", {"a": [1, 2]}),
        ("application/json", "{not json", "json", None),
        ("application/xml", "<a/>", "document", "<a/>"),
        ("text/xml", "<b/>", "document", "<b/>"),
        ("text/html", "<p>hi</p>", "document", "<p>hi</p>"),
        ("application/atom+xml", "<feed/>", "document", "<feed/>"),
        ("application/pdf", "%PDF-1.4", "rawdata", b"%PDF-1.4"),
        ("image/png", "PNG", "rawdata", b"PNG"),
    ],
)
def test_response_type_follows_the_docs_table(
    server: FaultServer, home: Path, content_type: str, body: str, rtype: str, expected: object
) -> None:
    r = vx.net.HttpRequest()
    r.open(constants.HTTP_METHOD_GET, echo(server, type=content_type, body=body))
    r.send()
    r.wait(timeout=30)
    assert r.responseType == rtype
    assert r.response == expected
    assert r.responseText == body


def test_status_text_is_the_servers_reason_phrase(
    server: FaultServer, background: bool, key: str
) -> None:
    r = new_request(background)
    r.open(constants.HTTP_METHOD_GET, echo(server, reason="Totally Fine", key=key))
    r.send()
    assert r.wait(timeout=30).statusText == "Totally Fine"
    r2 = new_request(background)
    r2.open(
        constants.HTTP_METHOD_GET,
        echo(server, status="404", reason="Nope", type="text/plain", body="x", key=key),
    )
    r2.send()
    r2.wait(timeout=30)
    assert (r2.status, r2.statusText, r2.readyState) == (404, "Nope", 4)
    assert r2.responseType == constants.HTTP_RESPONSE_TYPE_TEXT
    assert r2.response == ""  # a download keeps no error body (see README)
    assert r2.getResponseHeader("content-type") == "text/plain"


def test_set_cookie_is_never_exposed(server: FaultServer, background: bool, key: str) -> None:
    r = new_request(background)
    r.open(
        constants.HTTP_METHOD_GET,
        echo(server, set_cookie="sid=1; Path=/", set_cookie2="old=2", key=key),
    )
    r.send()
    r.wait(timeout=30)
    headers = r.getAllResponseHeaders()
    assert headers is not None
    assert "content-type" in headers
    assert "set-cookie" not in headers
    assert "set-cookie2" not in headers
    assert r.getResponseHeader("Set-Cookie") is None
    assert r.getResponseHeader("set-cookie2") is None
    assert r.task is not None
    assert r.task.response_headers["Set-Cookie"] == "sid=1; Path=/"  # it did arrive


# -- the docs' error table: network/DNS failures (send), error codes 100 and 101 -----------


def _failing(background: bool, url: str, config: dict[str, object] | None = None) -> tuple[
    vx.net.HttpRequest, list[tuple[int, int]]
]:  # fmt: skip
    states: list[tuple[int, int]] = []
    r = new_request(background, config)
    r.onReadyStateChange = lambda req: states.append((req.readyState, req.status))
    r.open(constants.HTTP_METHOD_GET, url)
    r.send()
    r.wait(timeout=30)
    return r, states


def test_error_row_network_error_gives_410_and_headers_received(home: Path) -> None:
    r, states = _failing(False, f"http://127.0.0.1:{free_port()}/x")
    assert states == [(1, 0), (2, 410), (4, 410)]
    assert "cannot connect" in r.statusText
    assert r.getAllResponseHeaders() is None
    assert r.getResponseHeader("content-type") is None
    assert r.response == ""
    assert r.responseText == ""


def test_error_row_dns_error_gives_410_and_headers_received(home: Path) -> None:
    r, states = _failing(False, "http://no-such-host.invalid/file.pdf")
    assert states == [(1, 0), (2, 410), (4, 410)]
    assert r.getAllResponseHeaders() is None


def test_error_row_timeout_gives_408(server: FaultServer, home: Path, key: str) -> None:
    states: list[tuple[int, int]] = []
    r = vx.net.HttpRequest()
    r.timeout = 500  # ms: foreground only, the whole request
    r.onReadyStateChange = lambda req: states.append((req.readyState, req.status))
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/100?stall_headers=5&key={key}"))
    r.send()
    r.wait(timeout=30)
    assert states == [(1, 0), (2, 408), (4, 408)]


def test_error_row_background_network_error_retries_until_the_resource_timeout(
    home: Path,
) -> None:
    r, states = _failing(
        True, f"http://127.0.0.1:{free_port()}/x", {"timeoutIntervalForResource": 1.5}
    )
    assert states == [(1, 0), (2, 408), (4, 408)]
    assert r.task is not None
    assert r.task.attempts > 1  # it kept retrying, as a background session does
    assert "resource timeout" in r.statusText
    assert "cannot connect" in r.statusText


def test_error_row_100_invalid_parameter_type(home: Path) -> None:
    r = vx.net.HttpRequest()
    bad_calls: list[Callable[[], object]] = [
        lambda: vx.net.HttpRequest(5),  # type: ignore[arg-type]
        lambda: vx.net.HttpRequest(""),  # an empty session id
        lambda: vx.net.HttpRequest({"timeoutIntervalForRequest": "60"}),
        lambda: r.open(5, "http://127.0.0.1/"),  # type: ignore[arg-type]
        lambda: r.open("GET", 5),  # type: ignore[arg-type]
        lambda: r.getResponseHeader(5),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(VoltMXError) as info:
            call()
        assert info.value.errorCode == 100
        assert isinstance(info.value, InvalidRequest)
    r.open("GET", "http://127.0.0.1/")
    with pytest.raises(VoltMXError) as info:
        r.setRequestHeader("X", 1)  # type: ignore[arg-type]
    assert info.value.errorCode == 100
    post = vx.net.HttpRequest()
    post.open("POST", "http://127.0.0.1/")
    with pytest.raises(VoltMXError) as info:
        post.send(object())
    assert info.value.errorCode == 100
    assert post.readyState == constants.HTTP_READY_STATE_OPENED  # nothing was sent
    spool = list((home / "voltmx").rglob("*.req"))
    assert spool == []  # and no half-written body stays in the home


def test_error_row_101_invalid_number_of_arguments(home: Path) -> None:
    r = vx.net.HttpRequest()
    for call in (r.open, lambda: r.open("GET"), r.getResponseHeader):
        with pytest.raises(VoltMXError) as info:
            call()
        assert info.value.errorCode == 101
    r.open("GET", "http://127.0.0.1/")
    with pytest.raises(VoltMXError) as info:
        r.setRequestHeader("X-Only-Name")
    assert info.value.errorCode == 101


def test_open_raises_syntax_error_for_unsupported_methods_and_urls(home: Path) -> None:
    r = vx.net.HttpRequest()
    with pytest.raises(VoltMXSyntaxError, match="unknown HTTP method 'FETCH'") as info:
        r.open("FETCH", "http://127.0.0.1/")
    assert info.value.name == "SyntaxError"
    with pytest.raises(VoltMXSyntaxError, match="absolute http"):
        r.open(constants.HTTP_METHOD_GET, "ftp://x/y")
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT  # still usable
    r.open("post", "http://127.0.0.1/")  # method names are case-insensitive (docs)
    assert r.readyState == constants.HTTP_READY_STATE_OPENED


def test_invalid_state_errors(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    with pytest.raises(InvalidStateError, match=r"after open\(\)"):
        r.send()
    with pytest.raises(InvalidStateError, match="after open"):
        r.setRequestHeader("X", "1")
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    with pytest.raises(VoltMXError, match="token"):
        r.setRequestHeader("Bad Name", "1")
    r.send()
    with pytest.raises(InvalidStateError, match="already called"):
        r.send()
    with pytest.raises(InvalidStateError, match="before send"):
        r.setRequestHeader("X", "1")
    r.wait(timeout=30)


# -- construction, sessions, timeouts ---------------------------------------------------------


def test_constructor_accepts_real_apps_options(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"timeoutIntervalForRequest": 0, "enableBackgroundTransfer": True, "bogus": 1}
    with caplog.at_level(logging.WARNING, logger="bgtransfer.voltmx"):
        r = vx.net.HttpRequest(options)
        vx.net.HttpRequest(options)
    logged = [rec.getMessage() for rec in caplog.records]
    assert sum("'bogus'" in m for m in logged) == 1  # logged once, not per request
    assert sum("'enableBackgroundTransfer'" in m for m in logged) == 1
    assert r.timeoutIntervalForRequest == 0  # 0 = no limit, as on Android
    assert r.timeoutIntervalForResource == 7 * 86400
    r.timeoutIntervalForResource = 30
    assert r.timeoutIntervalForResource == 30
    for bad in (-1, float("nan")):
        with pytest.raises(VoltMXError):
            vx.net.HttpRequest({"timeoutIntervalForRequest": bad})


def test_timeout_properties_are_used_and_fixed_at_send(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    r.timeoutIntervalForRequest = 12
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    r.send()
    with pytest.raises(InvalidStateError, match="before send"):
        r.timeoutIntervalForRequest = 5
    r.wait(timeout=30)
    assert r.task is not None
    assert r.task.status_code == 200


def test_idle_timeout_from_config_retries_a_stall_in_the_background(
    server: FaultServer, home: Path, key: str
) -> None:
    url = server.url(f"/gen/1000?stall_headers=5&times=1&key={key}")
    r = new_request(True, {"timeoutIntervalForRequest": 0.5, "timeoutIntervalForResource": 30})
    r.open(constants.HTTP_METHOD_GET, url)
    r.send()
    r.wait(timeout=30)
    assert r.status == 200
    reqs = [x for x in server.requests("/gen/") if x.query.get("key") == key]
    assert len(reqs) == 2
    assert 0.4 < reqs[1].time - reqs[0].time < 3


def test_a_foreground_stall_is_not_retried(server: FaultServer, home: Path, key: str) -> None:
    url = server.url(f"/gen/1000?stall_headers=5&times=1&key={key}")
    r = new_request(False, {"timeoutIntervalForRequest": 0.5})
    r.open(constants.HTTP_METHOD_GET, url)
    r.send()
    r.wait(timeout=30)
    assert r.status == 408
    assert len([x for x in server.requests("/gen/") if x.query.get("key") == key]) == 1


def test_abort(server: FaultServer, background: bool, key: str) -> None:
    states: list[int] = []
    r = new_request(background)
    r.onReadyStateChange = lambda req: states.append(req.readyState)
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/1000000?rate=100000&key={key}"))
    r.send()
    time.sleep(0.3)
    r.abort()
    assert states[-1] == 4
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT
    assert r.status == 0
    assert r.task is not None
    assert r.task.state is TaskState.COMPLETED


def test_open_after_send_ends_the_request_and_starts_over(
    server: FaultServer, background: bool, key: str
) -> None:
    r = new_request(background)
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/2000000?rate=200000&key={key}"))
    r.send()
    first = r.task
    assert first is not None
    states: list[int] = []
    r.onReadyStateChange = lambda req: states.append(req.readyState)
    r.open(constants.HTTP_METHOD_GET, echo(server, type="text/plain", body="second"))
    assert r.readyState == constants.HTTP_READY_STATE_OPENED
    assert r.status == 0
    r.send()
    r.wait(timeout=30)
    assert r.response == "second"
    assert states == [1, 2, 3, 4]  # the first request fired nothing more
    deadline = time.monotonic() + 10
    while first.state is not TaskState.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(first.error, Cancelled)


def test_background_members(server: FaultServer, home: Path, key: str) -> None:
    r = vx.net.HttpRequest({"sessionIdentifier": "com.example.bg"})
    r.backgroundTransfer = True
    assert r.getSession() == "com.example.bg"
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/2000000?rate=500000&key={key}"))
    with pytest.raises(InvalidStateError, match="before open"):
        r.backgroundTransfer = False
    assert r.backgroundTransfer is True
    with pytest.raises(InvalidStateError, match="send"):
        r.getTaskState()
    r.send()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_RUNNING
    assert int(r.getTaskState()) == 0  # a number, as on iOS
    r.suspend()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_SUSPENDED
    assert int(r.getTaskState()) == 1
    assert r.task is not None
    held = r.task.bytes_received
    time.sleep(0.3)
    assert r.task.bytes_received == held
    r.resume()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_RUNNING
    r.wait(timeout=60)
    assert r.getTaskState() == constants.SESSION_TASK_STATE_COMPLETED
    assert int(r.getTaskState()) == 3
    r.resume()  # on a completed task: nothing happens, as on iOS
    assert r.status == 200


def test_http_request_with_a_session_id_joins_that_background_session(
    server: FaultServer, home: Path, key: str
) -> None:
    first = vx.net.HttpRequest({"sessionIdentifier": "com.example.shared"})
    first.backgroundTransfer = True
    sid = first.getSession()
    joined = vx.net.HttpRequest(sid)
    assert joined.backgroundTransfer is True
    assert joined.getSession() == sid
    joined.open(constants.HTTP_METHOD_GET, server.url(f"/gen/5000?key={key}"))
    joined.send()
    joined.wait(timeout=30)
    assert joined.task is not None
    assert joined.task.session == sid
    ids = [t.task.id for t in vx.net.BackgroundSession(sid).getTasks() if t.task]
    assert joined.task.id in ids


def test_foreground_request_refuses_background_members(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    r.send()
    for member in (r.suspend, r.resume, r.getTaskState):
        with pytest.raises(InvalidStateError, match="backgroundTransfer = true"):
            member()
    r.wait(timeout=30)


def test_handlers_without_a_parameter_and_handlers_that_raise(
    server: FaultServer, home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    seen: list[int] = []
    httpclient = vx.net.HttpRequest()

    def downloadCallback() -> None:  # the docs' shape: the request comes from a variable
        seen.append(httpclient.readyState)
        if httpclient.readyState == 2:
            raise RuntimeError("a bug in the app's handler")

    httpclient.onReadyStateChange = downloadCallback
    httpclient.open(constants.HTTP_METHOD_GET, server.url("/gen/100"))
    httpclient.send()
    httpclient.wait(timeout=30)
    assert seen == [1, 2, 3, 4]  # the exception did not stop the request
    assert httpclient.status == 200
    assert "a bug in the app's handler" in capfd.readouterr().err


def test_synchronous_open(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/1000"), False)
    r.send()
    assert r.readyState == constants.HTTP_READY_STATE_DONE
    assert r.status == 200
    assert r.responseType == constants.HTTP_RESPONSE_TYPE_RAWDATA  # no Content-Type


def test_download_path_extension(server: FaultServer, home: Path, tmp_path: Path) -> None:
    r = vx.net.HttpRequest()
    r.downloadPath = tmp_path / "guide.bin"
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/5000"))
    r.send()
    with pytest.raises(InvalidStateError, match="before send"):
        r.downloadPath = tmp_path / "other.bin"
    r.wait(timeout=30)
    assert r.responseFile == str(tmp_path / "guide.bin")
    assert (tmp_path / "guide.bin").stat().st_size == 5000
    assert r.response == (tmp_path / "guide.bin").read_bytes()


def test_print(capsys: pytest.CaptureFixture[str]) -> None:
    vx.print("hello " + str(1))
    assert capsys.readouterr().out == "hello 1\n"


SCRIPT_SEND_AND_EXIT = """
import sys
from bgtransfer import voltmx
r = voltmx.net.HttpRequest({"sessionIdentifier": "com.example.relaunch"})
r.backgroundTransfer = True
r.open(voltmx.constants.HTTP_METHOD_GET, sys.argv[1])
r.send()
print(r.task.id)
"""

SCRIPT_LATER = """
import json, os
from bgtransfer import voltmx
s = voltmx.net.BackgroundSession("com.example.relaunch")
done = s.getCompletedRequests()
out = []
for r in done:
    r.wait(30)
    out.append([r.task.id, r.readyState, r.status, os.path.getsize(r.responseFile),
                r.getTaskState().name])
    r.acknowledge()
print(json.dumps(out))
print(len(s.getCompletedRequests()))
"""


def run(code: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_script_exits_after_send_and_a_later_script_learns_the_outcome(
    server: FaultServer, home: Path, key: str
) -> None:
    url = server.url(f"/gen/300000?rate=300000&key={key}")
    first = run(SCRIPT_SEND_AND_EXIT, url, home=home)
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    deadline = time.monotonic() + 30
    lines: list[str] = ["[]"]
    while time.monotonic() < deadline:
        later = run(SCRIPT_LATER, home=home)
        assert later.returncode == 0, later.stderr
        lines = later.stdout.splitlines()
        if json.loads(lines[0]):
            break
        time.sleep(0.3)
    assert json.loads(lines[0]) == [[task_id, 4, 200, 300000, "COMPLETED"]]
    assert lines[1] == "0"  # acknowledged: not reported again


SCRIPT_FOREGROUND_EXIT = """
import sys
from bgtransfer import voltmx
done = voltmx.net.HttpRequest()
done.open("GET", sys.argv[1])
done.send()
done.wait(30)
slow = voltmx.net.HttpRequest({"sessionIdentifier": "com.example.fg"})
slow.open("GET", sys.argv[2])
slow.send()
print(slow.task.id)
"""


def test_a_script_with_foreground_requests_closes_them_at_exit(
    server: FaultServer, home: Path, key: str
) -> None:
    fast, slow = server.url("/gen/100"), server.url(f"/gen/5000000?rate=100000&key={key}")
    out = run(SCRIPT_FOREGROUND_EXIT, fast, slow, home=home)
    assert out.returncode == 0, out.stderr
    assert "Unclosed" not in out.stderr  # the engine closed its HTTP client
    with bgtransfer.Session("com.example.fg", home=str(home), background=False) as s:
        task = s.task(out.stdout.strip())
        assert task.state is TaskState.SUSPENDED  # stopped at a checkpoint, resumable
        assert "interrupted" in task.detail


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "background_download.py",
            [
                "request.getSession() : com.bgtransfer.voltmx",
                "request.readyState : 4",
                "request.status : 200",
                "request.statusText : OK",
                "request.responseType : rawdata",
                "request.response : b'iPhone App Programming Guide",
                "'content-length': ",
            ],
        ),
        ("suspend.py", ["task state : SUSPENDED"]),
        (
            "resume.py",
            [
                "task state : SUSPENDED",
                "task state : RUNNING",
                "task state : COMPLETED",
                "status : 200 OK",
            ],
        ),
        (
            "task_state.py",
            [
                "tastState == constants.SESSION_TASK_STATE_RUNNING",
                "tastState == constants.SESSION_TASK_STATE_SUSPENDED",
                "tastState == constants.SESSION_TASK_STATE_COMPLETED",
            ],
        ),
    ],
)
def test_seed_examples(
    server: FaultServer, home: Path, key: str, example: str, expected: list[str]
) -> None:
    url = server.add(f"guide-{key}.txt", b"iPhone App Programming Guide\n" * 3000) + "?rate=100000"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / example), url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    pos = 0
    for needle in expected:
        found = out.stdout.find(needle, pos)
        assert found >= 0, f"{needle!r} not printed in order:\n{out.stdout}"
        pos = found
